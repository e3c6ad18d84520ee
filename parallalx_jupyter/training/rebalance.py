"""Shares follow the speed the ranks measure while training, not only the preflight's.

The preflight times a few steps; a device that slows down later (another program starts, a
laptop throttles) would hold every other rank back for the rest of the run. Every
:data:`PERIOD_S` of training the ranks exchange what their own steps cost per sample (forward
time over the forward share the preflight measured: backward time includes waiting for the
others, forward time does not) and rank 0 re-plans the batch shares with the preflight's
per-step overheads. A new split is taken only when it predicts a step at least
:data:`MIN_GAIN` shorter, so measurement noise does not shuffle samples back and forth.

Every sample of an epoch is still seen exactly once (``sharding.ShardPlan`` splits each global
batch by the current shares) and the exact strategies stay exact (losses are weighted by the
step's sizes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

PERIOD_S = 2.0
MIN_GAIN = 0.10
MIN_STEPS = 20


def period_steps(step_s: float) -> int:
    """Steps between exchanges (the same on every rank: from the broadcast report)."""
    if step_s <= 0:
        return MIN_STEPS
    return max(MIN_STEPS, int(PERIOD_S / step_s))


def replan(
    total: int, current: Sequence[int], overhead: Sequence[float], per_sample: Sequence[float]
) -> list[int] | None:
    """New per-rank batch sizes, or None when they would not shorten the step enough."""
    from .preflight import plan_shares
    from .sharding import proportional_split

    def step(split: Sequence[int]) -> float:
        return max(a + b * n for a, b, n in zip(overhead, per_sample, split, strict=True))

    new = proportional_split(total, plan_shares(total, overhead, per_sample), min_each=1)
    if new == list(current) or step(new) > (1 - MIN_GAIN) * step(current):
        return None
    return new


class Rebalancer:
    """One rank's side: accumulate its own costs, exchange them every ``every`` steps."""

    def __init__(self, *, rank: int, world: int, every: int, overhead: Sequence[float],
                 forward_fraction: float) -> None:
        self.rank, self.world, self.every = rank, world, max(1, every)
        self.overhead = list(overhead)
        self.forward_fraction = max(forward_fraction, 1e-3)
        self._compute = 0.0
        self._samples = 0
        self._steps = 0

    def record(self, samples: int, forward_s: float) -> None:
        self._compute += forward_s / self.forward_fraction
        self._samples += samples
        self._steps += 1

    def due(self, global_step: int) -> bool:
        return self.world > 1 and global_step % self.every == 0

    def exchange(self, current: Sequence[int], total: int, device: Any) -> list[int] | None:
        """Collective (every rank, same step): the new split every rank will use, or None."""
        import torch
        import torch.distributed as dist

        fixed = self.overhead[self.rank] * self._steps
        mine = max(self._compute - fixed, 0.0) / max(self._samples, 1)
        self._compute, self._samples, self._steps = 0.0, 0, 0
        costs = torch.zeros(self.world, dtype=torch.float64, device=device)
        costs[self.rank] = max(mine, 1e-9)
        dist.all_reduce(costs)
        # Rank 0 decides and sends integers: every rank then uses bit-identical sizes, even
        # where devices would round a float differently.
        plan = torch.full((self.world,), -1, dtype=torch.int64, device=device)
        if self.rank == 0:
            new = replan(total, current, self.overhead, costs.cpu().tolist())
            if new is not None:
                plan = torch.tensor(new, dtype=torch.int64, device=device)
        dist.broadcast(plan, src=0)
        sizes = [int(v) for v in plan.cpu().tolist()]
        return None if sizes[0] < 0 else sizes
