"""Live training metrics: cheap on the ranks, aggregated in the notebook, fanned out to listeners.

Rank side (:class:`RankMetrics`): accumulate per step with no synchronisation (the loss stays a
tensor until a report is due, so GPU ranks are not forced to sync every step) and emit at most
every ``interval_s`` through ``Worker.log_event``, which only queues a message on the worker's
batched stream to the scheduler: the training thread never waits on the network for metrics.

Notebook side: ``Client.subscribe_topic`` delivers the events; :class:`ProgressAggregator`
merges ranks into one progress record (samples/s, loss weighted by samples, communication share,
stragglers, ETA) and :class:`ProgressHub` hands records to subscribers (widgets, the event
stream, ``on_progress``) with their exceptions contained.

Record kinds sent to subscribers (plain JSON-able dicts, each with ``kind`` and ``job_id``):
``progress``, ``preflight``, ``checkpoint``, ``restart``, ``state``.

Communication share is an estimate for DDP/FSDP (communication overlaps backward): compute time
is the measured forward time divided by the forward fraction preflight measured on that device,
and the remainder of the step time is counted as communication and waiting. For local SGD the
averaging time is measured directly.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

from ..jobs.hub import ProgressHub, Record

logger = logging.getLogger(__name__)

__all__ = ["ProgressAggregator", "ProgressHub", "RankMetrics", "Record"]


def _weighted_mean(losses: list[tuple[Any, int]]) -> tuple[float, bool]:
    """The window's loss, weighted by samples, and whether no step of it had a finite loss
    (a diverged model: every loss after NaN parameters is NaN; one overflowing fp16 step
    that the grad scaler skips leaves the others finite)."""
    import torch

    values = torch.stack([loss.reshape(()).to(torch.float64) for loss, _ in losses]).cpu()
    weights = torch.tensor([n for _, n in losses], dtype=torch.float64)
    return float((values * weights).sum() / weights.sum()), not bool(values.isfinite().any())


class RankMetrics:
    """Per-rank accumulator with a time-based throttle."""

    def __init__(
        self,
        *,
        emit: Callable[[Record], None],
        rank: int,
        worker: str,
        attempt: int,
        local_batch: int,
        forward_fraction: float,
        interval_s: float = 0.5,
    ) -> None:
        self._emit = emit
        self.rank, self.worker, self.attempt = rank, worker, attempt
        self.local_batch = local_batch
        self.forward_fraction = max(forward_fraction, 1e-3)
        self.interval_s = interval_s
        #: (first step, last step, loss) of a reported window in which no loss was finite
        self.diverged: tuple[int, int, float] | None = None
        self._reset(time.perf_counter())

    def _reset(self, now: float) -> None:
        self._t0 = now
        self._steps = 0
        self._samples = 0
        # (loss tensor, samples) per step, summed only when a record is emitted: two tensor
        # ops per step on the training path were ~10 us of a 2-3 ms step
        self._losses: list[tuple[Any, int]] = []
        self._step_time = 0.0
        self._compute = 0.0
        self._comm = 0.0

    def record(
        self,
        *,
        epoch: int,
        global_step: int,
        total_steps: int,
        samples: int,
        loss: Any,
        step_s: float,
        forward_s: float,
        comm_s: float = 0.0,
    ) -> None:
        """Account one finished step; emits when the interval has passed."""
        self._steps += 1
        self._samples += samples
        if samples:
            self._losses.append((loss.detach(), samples))
        self._step_time += step_s
        self._compute += min(forward_s / self.forward_fraction, step_s)
        self._comm += comm_s
        now = time.perf_counter()
        if now - self._t0 >= self.interval_s:
            self.flush(epoch=epoch, global_step=global_step, total_steps=total_steps, now=now)

    def flush(
        self, *, epoch: int, global_step: int, total_steps: int, now: float | None = None
    ) -> None:
        """Emit what was accumulated (also at checkpoints and at the end)."""
        now = time.perf_counter() if now is None else now
        if self._steps == 0:
            return
        wall = max(now - self._t0, 1e-9)
        loss, diverged = _weighted_mean(self._losses) if self._losses else (float("nan"), False)
        if diverged:
            self.diverged = (global_step - self._steps + 1, global_step, loss)
        step_time = self._step_time / self._steps
        compute = self._compute / self._steps
        comm = max(self._comm / self._steps, step_time - compute)
        msg: Record = {
            "rank": self.rank,
            "worker": self.worker,
            "attempt": self.attempt,
            "epoch": epoch,
            "global_step": global_step,
            "total_steps": total_steps,
            "steps": self._steps,
            "samples": self._samples,
            "samples_per_s": self._samples / wall,
            "steps_per_s": self._steps / wall,
            "loss": loss,
            "step_time_s": step_time,
            "compute_s": compute,
            "comm_share": min(max(comm / step_time, 0.0), 1.0) if step_time > 0 else 0.0,
            "local_batch": self.local_batch,
            "time": time.time(),
        }
        try:
            self._emit(msg)
        except Exception:  # metrics must never break training
            logger.debug("could not emit metrics", exc_info=True)
        self._reset(now)


class ProgressAggregator:
    """Merge per-rank metric messages into one progress record for the notebook."""

    def __init__(self, job_id: str, total_steps: int, straggler_factor: float = 1.25) -> None:
        self.job_id = job_id
        self.total_steps = total_steps
        self.straggler_factor = straggler_factor
        self.ranks: dict[int, Record] = {}
        self.attempt = -1
        self.started = time.time()
        self.max_step = 0
        #: samples processed per worker address over the whole job (every attempt)
        self.samples_by_worker: dict[str, int] = {}

    def new_attempt(self, attempt: int) -> None:
        """Forget ranks of an earlier attempt (the group was re-formed)."""
        self.attempt = attempt
        self.ranks = {}

    def ingest(self, msg: Record) -> Record | None:
        """Take one rank message; return the updated progress record (None if stale)."""
        worker = str(msg.get("worker", ""))
        self.samples_by_worker[worker] = self.samples_by_worker.get(worker, 0) + int(
            msg.get("samples", 0)
        )
        if msg.get("attempt", self.attempt) != self.attempt:
            return None
        self.ranks[int(msg["rank"])] = msg
        self.max_step = max(self.max_step, int(msg["global_step"]))
        return self.snapshot()

    def snapshot(self) -> Record:
        ranks = [self.ranks[r] for r in sorted(self.ranks)]
        samples = sum(r["samples"] for r in ranks)
        loss = (
            sum(r["loss"] * r["samples"] for r in ranks if r["samples"]) / samples
            if samples
            else float("nan")
        )
        steps_per_s = statistics.median(r["steps_per_s"] for r in ranks) if ranks else 0.0
        step = self.max_step
        remaining = max(self.total_steps - step, 0)
        stragglers: list[int] = []
        if len(ranks) > 1:
            med = statistics.median(r["compute_s"] for r in ranks)
            stragglers = [
                r["rank"] for r in ranks if r["compute_s"] > self.straggler_factor * med > 0
            ]
        return {
            "kind": "progress",
            "job_id": self.job_id,
            "attempt": self.attempt,
            "epoch": max((r["epoch"] for r in ranks), default=0),
            "global_step": step,
            "total_steps": self.total_steps,
            "fraction": step / self.total_steps if self.total_steps else 1.0,
            "loss": loss,
            "samples_per_s": sum(r["samples_per_s"] for r in ranks),
            "steps_per_s": steps_per_s,
            "comm_share": statistics.mean(r["comm_share"] for r in ranks) if ranks else 0.0,
            "eta_s": remaining / steps_per_s if steps_per_s > 0 else None,
            "elapsed_s": time.time() - self.started,
            "world_size": len(ranks),
            "stragglers": stragglers,
            "samples_by_worker": dict(self.samples_by_worker),
            "ranks": [
                {
                    k: r[k]
                    for k in (
                        "rank",
                        "worker",
                        "samples_per_s",
                        "loss",
                        "comm_share",
                        "local_batch",
                        "step_time_s",
                        "global_step",
                    )
                }
                for r in ranks
            ],
            "time": time.time(),
        }
