"""Dask settings for the scheduler and workers of a cluster that trains.

A parallalx device runs its Dask worker *next to* the rank process that does the training, on
the same cores. Dask's defaults are tuned for clusters whose work runs inside the worker: an
event-loop health tick every 20 ms, a system monitor every 500 ms, a memory check every 100 ms
and a statistical profiler sampling every thread every 10 ms. None of that sees the work of a
rank process, and on a 2-4 core laptop it is CPU taken from the gloo all-reduces that the step
time hangs on (measured in ``benchmarks/bench_training.py``). The slower periods below change
nothing a parallalx job relies on: failure detection uses heartbeats and the process group's
own timeout, not these ticks, and the memory limit is still enforced, just checked once a second.

This module imports nothing but the standard library: ``worker_main.py`` loads it by path in
environments that may not have ``parallalx_jupyter`` installed.
"""

from __future__ import annotations

QUIET_DASK_CONFIG: dict[str, object] = {
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.worker.profile.enabled": False,
}


def quiet_dask_env() -> dict[str, str]:
    """The same settings as ``DASK_*`` environment variables, for worker processes that a
    third-party launcher starts (``LocalCluster(env=...)``, a job script)."""
    env = {}
    for key, value in QUIET_DASK_CONFIG.items():
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))
        env[name] = str(value)
    return env
