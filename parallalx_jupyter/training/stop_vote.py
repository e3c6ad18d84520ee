"""Ranks agree on stopping (cancel) without a collective on the training path.

Every rank must stop at the same step, or the others hang in their next all-reduce, so stopping
needs a vote. A blocking all-reduce every ``every`` steps on the training group cost ~8% of a
small model's steps (one extra latency-bound collective per ten gradient all-reduces). Here
each vote runs asynchronously on a separate gloo group (its own sockets and thread) and is only
read at the *next* vote, ``every`` steps later: by then it has long finished, so the read never
waits, and every rank reads the same result at the same step. A stop request is honoured
within ``2 * every`` steps.

``every`` is a period in *time*, converted to steps from the preflight's step-time estimate
(:func:`vote_every`): a fixed ten steps was a vote every 20-30 ms for a small model (each one a
wake-up of both ranks' gloo threads on cores that the training is waiting on) and every several
seconds for a big one. Every rank derives the same number from the same broadcast report.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

VOTE_PERIOD_S = 0.25  # a cancel is honoured within about twice this
MAX_VOTE_EVERY = 1000


def vote_every(step_s: float, minimum: int) -> int:
    """Steps between votes so that one happens about every :data:`VOTE_PERIOD_S`."""
    if step_s <= 0:
        return max(1, minimum)
    return max(1, minimum, min(MAX_VOTE_EVERY, int(VOTE_PERIOD_S / step_s)))


class StopVote:
    def __init__(self, every: int, wants_stop: Callable[[], bool], timeout_s: float) -> None:
        from .launcher import side_group

        self.every = max(1, int(every))
        self.wants_stop = wants_stop
        self.group = side_group(timeout_s, backend="gloo")
        self._pending: tuple[Any, Any] | None = None

    def should_stop(self, step: int) -> bool:
        """Call at every step (same step numbers on every rank); True: stop now."""
        if step % self.every:
            return False
        import torch
        import torch.distributed as dist

        if self._pending is not None:
            work, flag = self._pending
            self._pending = None
            work.wait()
            if flag.item() > 0:
                return True
        flag = torch.tensor([1.0 if self.wants_stop() else 0.0])
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group, async_op=True)
        self._pending = (work, flag)
        return False

    def close(self) -> None:
        """Finish the vote in flight (every rank started it) before the group goes away."""
        if self._pending is not None:
            work, _ = self._pending
            self._pending = None
            work.wait()
