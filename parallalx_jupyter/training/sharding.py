"""Heterogeneous data sharding: who trains on which samples, and how their gradients are weighted.

Devices differ in speed, so each rank gets a per-step batch proportional to its measured
throughput while every rank still takes the same number of steps (one gradient sync per step,
so no DDP ``Join`` is ever needed). The global batch of each step is a contiguous slice of one
epoch-wide permutation, split between ranks by their shares; hence every sample of an epoch is
seen exactly once across ranks, whatever the shares are, and a resumed or re-formed job (other
world size, other shares) continues with exactly the same global batches.

Weighting: the user's loss is a *mean* over the local batch. One large batch of ``n`` samples
has gradient ``sum_i (n_i / n) * grad(mean_loss_i)``. DDP and FSDP average gradients over the
world size ``W``, so each rank scales its loss by ``W * n_i / n``; the average then equals the
large-batch gradient exactly (up to float summation order), including the last partial batch,
where ``n`` is smaller and some ranks may hold zero samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


def proportional_split(total: int, weights: Sequence[float], min_each: int = 1) -> list[int]:
    """Split ``total`` into integers proportional to ``weights``, each ``>= min_each``.

    Largest-remainder rounding keeps the sum exact; ties go to the lower rank so the result is
    deterministic on every rank. Zero or negative weights count as the smallest positive one.
    """
    k = len(weights)
    if k == 0:
        raise ValueError("need at least one weight")
    if total < min_each * k:
        raise ValueError(f"cannot give {k} ranks at least {min_each} each out of {total}")
    positive = [w for w in weights if w > 0 and math.isfinite(w)]
    floor_w = min(positive) if positive else 1.0
    w = [x if (x > 0 and math.isfinite(x)) else floor_w for x in weights]
    spare = total - min_each * k
    wsum = sum(w)
    exact = [spare * x / wsum for x in w]
    out = [min_each + int(math.floor(e)) for e in exact]
    rest = total - sum(out)
    order = sorted(range(k), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    for i in order[:rest]:
        out[i] += 1
    return out


@dataclass
class ShardPlan:
    """Deterministic per-epoch sampling plan shared by all ranks.

    ``per_rank`` are the full-step batch sizes (sum == ``global_batch``). The plan is a pure
    function of its fields, so every rank computes identical index sets without talking.
    """

    dataset_len: int
    global_batch: int
    per_rank: list[int]
    seed: int = 0
    shuffle: bool = True
    _perm_cache: dict[int, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if sum(self.per_rank) != self.global_batch:
            raise ValueError(f"per-rank sizes {self.per_rank} do not sum to {self.global_batch}")
        if self.dataset_len <= 0:
            raise ValueError("dataset is empty")

    @classmethod
    def from_throughput(
        cls,
        dataset_len: int,
        global_batch: int,
        throughput: Sequence[float],
        seed: int = 0,
        shuffle: bool = True,
    ) -> ShardPlan:
        """Shares proportional to measured samples/s (every rank gets at least one sample)."""
        return cls(
            dataset_len=dataset_len,
            global_batch=global_batch,
            per_rank=proportional_split(global_batch, throughput, min_each=1),
            seed=seed,
            shuffle=shuffle,
        )

    @property
    def world_size(self) -> int:
        return len(self.per_rank)

    @property
    def steps_per_epoch(self) -> int:
        """Steps per epoch; the last one may be partial (no sample is dropped)."""
        return math.ceil(self.dataset_len / self.global_batch)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order: same on every rank, different every epoch."""
        perm = self._perm_cache.get(epoch)
        if perm is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm = torch.randperm(self.dataset_len, generator=g)
            else:
                perm = torch.arange(self.dataset_len)
            self._perm_cache = {epoch: perm}  # keep one epoch: bounded memory
        return perm

    def step_sizes(self, step: int) -> list[int]:
        """Samples per rank at ``step`` (the last partial step is split by the same shares)."""
        start = step * self.global_batch
        n = min(self.global_batch, self.dataset_len - start)
        if n <= 0:
            raise IndexError(f"step {step} is past the end of the epoch")
        if n == self.global_batch:
            return list(self.per_rank)
        return proportional_split(n, self.per_rank, min_each=0)

    def global_indices(self, epoch: int, step: int) -> torch.Tensor:
        """All sample indices of one global batch (what a single big-batch run would use)."""
        start = step * self.global_batch
        return self.permutation(epoch)[start : start + self.global_batch]

    def rank_indices(self, epoch: int, step: int, rank: int) -> torch.Tensor:
        """This rank's slice of the global batch at (epoch, step); may be empty at the end."""
        sizes = self.step_sizes(step)
        offset = sum(sizes[:rank])
        return self.global_indices(epoch, step)[offset : offset + sizes[rank]]

    def loss_scale(self, step: int, rank: int) -> float:
        """Factor for the rank's mean loss so averaged gradients equal the big-batch gradient."""
        sizes = self.step_sizes(step)
        return self.world_size * sizes[rank] / sum(sizes)

    def positions(self, start_epoch: int, start_step: int, epochs: int):
        """Yield (epoch, step) from a resume position to the end of ``epochs``."""
        for epoch in range(start_epoch, epochs):
            first = start_step if epoch == start_epoch else 0
            for step in range(first, self.steps_per_epoch):
                yield epoch, step
