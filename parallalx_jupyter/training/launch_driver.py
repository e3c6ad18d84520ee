"""The driver of ``px.launch``: ``train()``'s driver with the user's function as rank body.

Everything that makes a job survive a cluster of ordinary devices is :class:`Driver`'s and is
reused as is: probing the workers (versions), one payload per worker, rank 0's rendezvous
store, pinned rank tasks, heartbeat and silent-rank loss detection, aborting the survivors,
settling, classifying (a user error is never retried), re-forming with the survivors from the
newest checkpoint (``max_restarts``, ``min_workers``), the job's ``state``/``restart`` records
and device names. What differs:

* the rank task is :func:`launch_rank.run_launch_rank` (the user's function as body);
* rank 0's ``px.report`` batches (``launch_rank.REPORT_BATCH_S``) become the job's progress
  records, one each, spaced as they were made; its return value
  arrives as a ``result`` message (data, on the ship channel) which ends the run;
* a rank whose function hangs in a collective makes the others fail at the group timeout
  while every device is healthy: that is the user's hang, reported with the hung ranks'
  device names (:class:`HungRankError`) instead of being retried as a lost device;
* a cancelled job's ranks exit at once (nothing in the user's code votes to stop), so the
  driver stops waiting as soon as no rank is left.
"""

from __future__ import annotations

import time
from typing import Any

from distributed import Future

from ..wire import from_wire
from .driver import Driver
from .launch_rank import HungRankError, run_launch_rank
from .launch_requirements import RequirementsError, ensure_requirements_task
from .recovery import AttemptOutcome


class LaunchDriver(Driver):
    """Runs ``launch``'s job; ``run()`` returns rank 0's return value in wire form."""

    rank_task = staticmethod(run_launch_rank)

    def __init__(self, *args: Any, requirements: list[str] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: ranks still running on healthy workers when another rank failed (hang suspects)
        self._pending_at_failure: list[tuple[int, str]] = []
        #: PEP 508 lines each worker's interpreter must satisfy before its ranks start
        self.requirements = list(requirements or [])
        self._provided: set[str] = set()  # workers that have them (checked once per job)
        self._report_time = 0.0  # the time given to the last progress record

    def _prepare_workers(self, workers: list[str], attempt: int) -> None:
        """Check and install the job's requirements on each worker not checked yet, all at
        once; the first device that cannot have them fails the job with its name."""
        todo = [w for w in workers if w not in self._provided]
        if not self.requirements or not todo:
            return
        self._phase("installing")
        futures = {
            w: self.client.submit(ensure_requirements_task, self.requirements,
                                  key=f"parallalx-requirements-{self.job.job_id}-{attempt}-{i}",
                                  workers=[w], allow_other_workers=False, pure=False)
            for i, w in enumerate(todo)
        }
        for worker, future in futures.items():
            try:
                done = from_wire(future.result())
            except Exception as err:  # pip's own words: what is missing, which version
                reason = " ".join(str(getattr(err, "message", None) or err).split())[:2000]
                raise RequirementsError(
                    f"{self._label(worker)} cannot provide the job's requirements "
                    f"({', '.join(self.requirements)}): {reason}") from None
            self._provided.add(worker)
            if done.get("installed"):
                self.hub.emit({"kind": "state", "state": "running", "time": time.time(),
                               "message": f"installed on {self._label(worker)}: "
                                          f"{', '.join(done['installed'])}"})

    def _handle_control(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind")
        if kind == "report":
            if msg.get("attempt") != self.aggregator.attempt:
                return  # a late report of a superseded attempt
            self._running_again()
            batch = [dict(f) for f in msg.get("batch") or [msg.get("fields") or {}]]
            # each report's time: its arrival, less how much earlier than the batch's last
            # it was made (the rank's monotonic clock: no skew between the devices' clocks)
            now, last = time.time(), _number(batch[-1].get("_at"))
            for fields in batch:
                at = _number(fields.pop("_at", None))
                when = now - (last - at) if at is not None and last is not None else now
                # never before the previous batch's last (a batch may travel faster)
                when = self._report_time = max(when, self._report_time)
                self.hub.emit({**fields, "kind": "progress", "job_id": self.job.job_id,
                               "time": when, "attempt": msg.get("attempt"),
                               "workers": len(self._workers)})
        elif kind == "result":
            if msg.get("attempt") == self.aggregator.attempt:
                self._final = msg
        else:
            if kind == "checkpoint":
                self._running_again()
            super()._handle_control(msg)

    def _abort(self, futures: list[Future], workers: list[str], lost: set[str]) -> None:
        self._pending_at_failure = [
            (rank, w) for rank, (f, w) in enumerate(zip(futures, workers, strict=True))
            if f.status == "pending" and w not in lost
        ]
        super()._abort(futures, workers, lost)

    def _monitor(self, futures: list[Future], workers: list[str]) -> AttemptOutcome:
        self._pending_at_failure = []
        outcome = super()._monitor(futures, workers)
        text = (outcome.detail or "").lower()
        timed_out = "timed out" in text or "timeout" in text
        if outcome.status == "infra" and not outcome.lost and timed_out and \
                self._pending_at_failure:
            who = ", ".join(f"rank {r} on {self._label(w)}" for r, w in self._pending_at_failure)
            error = HungRankError(
                f"{who} did not reach a collective the other ranks waited in for the group "
                f"timeout ({self.group_timeout:.0f} s), while its device stayed healthy: its "
                "function hangs there (a deadlock, a wait that never ends, or a collective "
                "only some ranks call)", "", self._pending_at_failure[0][0],
                self._pending_at_failure[0][1],
            )
            return AttemptOutcome("user_error", lost=set(), error=error, detail=str(error))
        return outcome

    def _wait_ranks(self, futures: list[Future], timeout: float) -> None:
        if self.cancel_event.is_set() and all(f.status != "pending" for f in futures):
            self._final = self._final or {"cancelled": True, "data": b"", "global_step": 0}
            return
        super()._wait_ranks(futures, timeout)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) \
        else None


__all__ = ["LaunchDriver"]
