"""Failure detection and classification for one attempt of a job.

Facts this is built on (measured on this project's test cluster; docs/cluster.md):

* A *crashed* worker makes the survivors fail within milliseconds (gloo "Connection reset by
  peer"); its own pinned task never fails, it waits in ``no-worker`` forever, so it must be
  cancelled explicitly.
* A *frozen* worker (SIGSTOP, a sleeping laptop) produces no error at all: the survivors block
  in a collective until the process-group timeout, and the scheduler keeps the worker until
  ``worker-ttl`` (5 minutes by default). So the driver also watches heartbeats: a worker whose
  ``last_seen`` on the scheduler stops advancing is treated as lost without waiting for the TTL.
* After the first error the driver *settles*: it waits for the other ranks to end. A rank whose
  worker is gone, or whose heartbeat has stopped, is lost at once; a rank on a live worker is
  waited for (its collectives are bounded by the group timeout), so a merely slow survivor on a
  loaded machine is not excluded. Lost workers are excluded for the rest of the job and their
  pinned tasks are cancelled.

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


@dataclass
class AttemptOutcome:
    """How one attempt ended and which workers must not be used again."""

    status: str  # finished | cancelled | user_error | infra
    lost: set[str] = field(default_factory=set)
    error: BaseException | None = None
    detail: str = ""


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
) -> set[str]:
    """Wait for the ranks still pending after a failure; return the workers given up on.

    A pending rank is given up on at once when its worker left the scheduler, or when its
    heartbeat has not advanced for ``stale_s`` (a frozen peer has usually been silent for the
    whole group timeout by the time the survivors give up). A pending rank on a worker that is
    still heartbeating is merely slow to notice (a loaded machine): its collectives are bounded
    by the group timeout, so it is waited for up to ``max_wait_s`` rather than wrongly excluded.
    """
    deadline = time.monotonic() + max_wait_s
    hopeless: set[str] = set()
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
            return set(pending) | watch.gone(ended)
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
