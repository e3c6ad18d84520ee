"""Failure detection and classification for one attempt of a job.

Facts this is built on (measured on this project's test cluster; docs/cluster.md):

* A *crashed* worker makes the survivors fail within milliseconds (gloo "Connection reset by
  peer"); its own pinned task never fails, it waits in ``no-worker`` forever, so it must be
  cancelled explicitly.
* A *frozen* worker (SIGSTOP, a sleeping laptop) produces no error at all: the survivors block
  in a collective until the process-group timeout, and the scheduler keeps the worker until
  ``worker-ttl`` (5 minutes by default). So the driver also watches heartbeats: a worker whose
  ``last_seen`` on the scheduler stops advancing is treated as lost without waiting for the TTL.
* A *pulled cable* looks like a frozen worker, and the group timeout is long (60 s by default):
  so once the ranks of an attempt have reported at all, a worker whose heartbeat has been stale
  for :data:`QUICK_STALE_S` while *no rank* has reported anything for as long (every rank
  stalls in the collective that waits for it) is lost without waiting for the group timeout
  (:func:`silent_losses`). Both signals are needed: a stale heartbeat alone is often a busy
  worker or scheduler, and silent ranks alone are often a long step or checkpoint; a worker
  whose own event loop stalls does not silence the *other* ranks, whose processes train on.
  The survivors, blocked in that collective, are then killed by their own Dask task
  (``rank.abort_key``), so the group re-forms at once.
* After the first error the driver *settles*: it waits for the other ranks to end. A rank whose
  worker is gone, or whose heartbeat has stopped, is lost at once; a rank on a live worker is
  waited for (its collectives are bounded by the group timeout), so a merely slow survivor on a
  loaded machine is not excluded. Lost workers are excluded for the rest of the job and their
  pinned tasks are cancelled.
* People see devices by name: :func:`device_label` turns a worker address into the device's
  name where one is known (parallalx names its workers ``<device_id>[/...]``), else the Dask
  worker's own name, else the address.

Classification (``jobs.failures.classify_failure``, shared with inference and sweeps): any
:class:`UserCodeError` wins (restarting would fail again); otherwise the attempt failed for
infrastructure reasons, or for reasons nobody explained, and the job re-forms with the
survivors (bounded by ``max_restarts``).
"""

from __future__ import annotations

import logging
import time
import traceback as _tb
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, Future

from ..jobs.failures import classify_failure
from .errors import RankInfraError, UserCodeError
from .options import RecoveryOptions

logger = logging.getLogger(__name__)

#: Seconds of stale heartbeat (with every rank silent as long) after which a worker is lost.
#: Dask workers heartbeat every 0.5 s, so this is eight missed beats; with the driver's polling
#: a pulled cable shows as a recovering job within about 6 s.
QUICK_STALE_S = 4.0


class WorkerWatch:
    """Scheduler-side view of worker liveness: gone workers and stale heartbeats.

    ``last_seen`` is the scheduler's clock, which may differ from ours, so staleness is
    measured as how long (on our clock) the value has not changed.
    """

    def __init__(
        self,
        client: Client,
        stale_after_s: float = RecoveryOptions.heartbeat_timeout,
        min_interval_s: float = 0.5,
    ):
        self.client = client
        self.stale_after_s = stale_after_s
        self.min_interval_s = min_interval_s
        self._seen: dict[str, tuple[float, float]] = {}
        self._info: dict[str, Mapping[str, Any]] = {}
        # kept after a worker leaves: a lost device is still named by what it was called
        self._names: dict[str, str] = {}
        self._polled = 0.0

    def poll(self, force: bool = False) -> dict[str, Mapping[str, Any]]:
        """Refresh worker info from the scheduler (rate-limited unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._polled < self.min_interval_s:
            return dict(self._info)
        self._polled = now
        try:
            # Ask the scheduler directly: Client.scheduler_info() returns a cache that the
            # client's periodic refresh overwrites *without* workers, so it can race to "{}".
            ident = self.client.sync(self.client.scheduler.identity, n_workers=-1)
            info = dict(ident["workers"])
        except Exception:  # scheduler briefly unreachable: keep the last view
            logger.debug("scheduler_info failed", exc_info=True)
            return dict(self._info)
        for addr, w in info.items():
            last = float(w.get("last_seen", 0.0))
            prev = self._seen.get(addr)
            if prev is None or prev[0] != last:
                self._seen[addr] = (last, now)
            if w.get("name") is not None:
                self._names[addr] = str(w["name"])
        self._info = info
        return dict(info)

    def alive(self) -> set[str]:
        """Workers the scheduler lists as running and whose heartbeats still advance."""
        info = self.poll()
        return {
            a
            for a, w in info.items()
            if str(w.get("status", "running")) == "running" and a not in self.stale(info)
        }

    def gone(self, workers: Iterable[str]) -> set[str]:
        info = self.poll()
        return {w for w in workers if w not in info}

    def stale(self, workers: Iterable[str], after_s: float | None = None) -> set[str]:
        limit = self.stale_after_s if after_s is None else after_s
        now = time.monotonic()
        return {w for w in workers if w in self._seen and now - self._seen[w][1] > limit}

    def unreachable(self, workers: Iterable[str], stale_after_s: float | None = None) -> set[str]:
        """Gone from the scheduler, or heartbeat not advancing for ``stale_after_s``."""
        workers = list(workers)
        return self.gone(workers) | self.stale(workers, stale_after_s)

    def stale_for(self) -> dict[str, float]:
        """Seconds since each listed worker's heartbeat last advanced, as both clocks agree.

        Ours alone would count a stalled scheduler (an event loop busy for seconds on a loaded
        machine) against every worker whose heartbeat it had not processed yet when it
        answered; so the age is also taken on the scheduler's clock, behind the freshest
        heartbeat it holds, and the smaller of the two counts.
        """
        self.poll()
        now = time.monotonic()
        last = {a: float(w.get("last_seen", 0.0)) for a, w in self._info.items()}
        ref = max(last.values(), default=0.0)
        return {a: min(now - self._seen[a][1], ref - last[a]) for a in last if a in self._seen}

    def name_of(self, address: str) -> str | None:
        """The Dask worker's own name (also for a worker that has left), if it had one."""
        return self._names.get(address)


@dataclass
class AttemptOutcome:
    """How one attempt ended and which workers must not be used again."""

    status: str  # finished | cancelled | user_error | infra
    lost: set[str] = field(default_factory=set)
    error: BaseException | None = None
    detail: str = ""
    #: what gave the failure away, in a few words for people (the job's status line)
    reason: str = ""
    #: wall-clock time the driver noticed the failure (before settling)
    detected_at: float | None = None


def silent_losses(
    pending: Iterable[str],
    stale_for: Mapping[str, float],
    quiet_for: float,
    *,
    stale_s: float = QUICK_STALE_S,
    quiet_s: float = QUICK_STALE_S,
) -> set[str]:
    """Pending ranks' workers to give up on now, before the group timeout (see module docs).

    ``stale_for``: seconds since each worker's heartbeat advanced (every worker the scheduler
    lists); ``quiet_for``: seconds since any rank of the attempt last reported. Nothing is
    given up on unless the ranks are quiet, and unless some worker's heartbeat is fresh: when
    every heartbeat looks stale the scheduler (or our view of it) is what stalled, not the
    devices.
    """
    if quiet_for < quiet_s:
        return set()
    if not any(age < stale_s / 2 for age in stale_for.values()):
        return set()
    return {w for w in pending if stale_for.get(w, 0.0) >= stale_s}


def device_label(
    address: str, worker_name: str | None = None, names: Mapping[str, str] | None = None
) -> str:
    """How a worker is shown to people: its device's name where known, never a bare address
    when anything better exists.

    ``worker_name`` is the Dask worker's name (parallalx's are ``<device_id>`` or
    ``<device_id>/<suffix>``); ``names`` maps device IDs to the names people gave them.
    """
    if worker_name:
        device, _, suffix = worker_name.partition("/")
        if names and device in names:
            return f"{names[device]}/{suffix}" if suffix else names[device]
        # a plain Dask cluster: a chosen name; LocalCluster's 0, 1, ... say nothing alone
        if worker_name != address and not worker_name.isdigit():
            return worker_name
        if worker_name.isdigit():
            return f"worker {worker_name} ({address})"
    return address


def remote_error_text(future: Future) -> str:
    """Exception and remote traceback of an erred future, as text."""
    try:
        exc = future.exception(timeout=5)
        tb = future.traceback(timeout=5)
    except Exception as e:  # pragma: no cover - defensive
        return f"(could not fetch the remote error: {e!r})"
    text = "".join(_tb.format_exception(type(exc), exc, tb)) if exc is not None else ""
    return text.strip()


def settle(
    futures: Sequence[Future],
    workers: Sequence[str],
    watch: WorkerWatch,
    *,
    stale_s: float,
    max_wait_s: float,
    pump: Callable[[], None],
    given_up: Iterable[str] = (),
) -> set[str]:
    """Wait for the ranks still pending after a failure; return the workers given up on.

    ``given_up``: workers already known to be lost (:func:`silent_losses`), not waited for.

    A pending rank is given up on at once when its worker left the scheduler, or when its
    heartbeat has not advanced for ``stale_s`` (a frozen peer has usually been silent for the
    whole group timeout by the time the survivors give up). A pending rank on a worker that is
    still heartbeating is merely slow to notice (a loaded machine): its collectives are bounded
    by the group timeout, so it is waited for up to ``max_wait_s`` rather than wrongly excluded.
    """
    deadline = time.monotonic() + max_wait_s
    given = set(given_up)
    hopeless = set(given)
    while True:
        pump()
        pending = [w for f, w in zip(futures, workers, strict=True) if f.status == "pending"]
        hopeless |= watch.unreachable(pending, stale_s)
        waiting = set(pending) - hopeless
        if not waiting or time.monotonic() >= deadline:
            if waiting:
                logger.warning("ranks on %s never ended; giving up on them", sorted(waiting))
            # A rank whose worker left may also end "cancelled": its own copy of the job's
            # payload (shipped to that worker alone) was lost with it.
            ended = [
                w
                for f, w in zip(futures, workers, strict=True)
                if f.status in ("cancelled", "lost")
            ]
            if ended:
                watch.poll(force=True)  # the scheduler dropped that worker before the rank
            return set(pending) | watch.gone(ended) | given
        time.sleep(0.05)


def classify(futures: Sequence[Future], workers: Sequence[str], lost: set[str]) -> AttemptOutcome:
    """Decide between user error and infrastructure failure from the rank futures."""
    user_errors: list[UserCodeError] = []
    other: list[str] = []
    for f, w in zip(futures, workers, strict=True):
        if f.status != "error":
            continue
        try:
            exc = f.exception(timeout=5)
        except Exception as e:  # pragma: no cover - defensive
            exc = e
        kind = classify_failure(exc)
        if kind == "user" and isinstance(exc, UserCodeError):
            user_errors.append(exc)
        elif kind == "device":
            other.append(f"{w}: {exc}")
        else:  # unexplained: re-formed like the device's, with the remote traceback
            other.append(f"{w}:\n{remote_error_text(f)}")
    if user_errors:
        first = min(user_errors, key=lambda e: e.rank)
        return AttemptOutcome("user_error", lost=set(lost), error=first, detail=str(first))
    detail = "; ".join(other) or "ranks stopped responding"
    if lost:
        detail = f"lost worker(s) {sorted(lost)}; {detail}"
    return AttemptOutcome("infra", lost=set(lost), error=RankInfraError(detail), detail=detail)
