"""How soon a worker that went silent leaves the scheduler, and so every view of the cluster.

distributed removes a worker that has not heartbeated for ``worker-ttl`` (5 minutes by default)
and looks only once per ``worker-ttl``: a laptop whose cable was pulled stays listed for 5 to
10 minutes, its pinned tasks waiting on it. Workers heartbeat every 0.5 s while a cluster has
at most 10 of them (``distributed.scheduler.heartbeat_interval``: 1 s up to 50, then slower)
and the scheduler never applies a TTL below ten intervals. So parallalx's scheduler removes a
worker after :data:`WORKER_TTL_S` without a heartbeat (16 missed beats: a loaded machine's
hiccup is not a loss) and looks every :data:`CHECK_S`, which puts a cut device out of the
cluster view within about 9 s. A worker that was only asleep finds itself unknown when it
wakes, closes, and parallalx's supervisor starts it again (``worker.py``): it rejoins.

Any other Dask scheduler gets the same with ``dask scheduler --preload
parallalx_jupyter.cluster.liveness`` (:func:`dask_setup`).
"""

from __future__ import annotations

from typing import Any

WORKER_TTL_S = 8.0
CHECK_S = 1.0


def apply(scheduler: Any, ttl_s: float = WORKER_TTL_S, check_s: float = CHECK_S) -> None:
    """Remove workers silent for ``ttl_s`` seconds, checking every ``check_s`` seconds.

    Before the scheduler starts (as a preload does), the check starts with its other periodic
    callbacks; on a running scheduler it starts at once.
    """
    from distributed.core import Status
    from tornado.ioloop import PeriodicCallback

    if not (ttl_s > 0 and check_s > 0):
        raise ValueError(f"worker TTL and check interval must be positive, not {ttl_s}, {check_s}")
    old = scheduler.periodic_callbacks.get("worker-ttl")
    if old is not None:
        old.stop()
    scheduler.worker_ttl = float(ttl_s)
    pc = PeriodicCallback(scheduler.check_worker_ttl, min(check_s, ttl_s) * 1000)
    scheduler.periodic_callbacks["worker-ttl"] = pc
    if scheduler.status == Status.running:
        pc.start()


def dask_setup(scheduler: Any) -> None:
    """Dask's preload hook (``--preload parallalx_jupyter.cluster.liveness``)."""
    apply(scheduler)
