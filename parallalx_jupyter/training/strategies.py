"""Data-parallel strategies and the rule that picks one from the preflight measurement.

* ``ddp``: DistributedDataParallel, fp32 gradient all-reduce every step (exact big-batch maths).
* ``ddp_fp16``: DDP with ``fp16_compress_hook``: half the bytes on the wire, fp16 rounding of the
  averaged gradient (near-exact). Useful when bandwidth, not latency, dominates.
* ``local_sgd``: every rank steps on its own shard and parameters are averaged (weighted by the
  samples each rank saw) every ``H`` steps, DiLoCo-style with an outer learning rate of 1. One
  sync per ``H`` steps, so it survives slow links; the maths is no longer one big batch. The
  average runs in the background while training goes on and is applied ``H // 2`` steps later
  (each rank keeps what it learnt meanwhile: ``p = average(snapshot) + (p - snapshot)``), so a
  link that needs several steps' time for one all-reduce costs almost nothing. What travels is
  each rank's progress since the last average, in fp16: half the bytes of the parameters.
* ``fsdp``: FSDP2 ``fully_shard`` (works on CPU/gloo); ~1.5x DDP's traffic (all-gather forward
  and backward, reduce-scatter), so it is chosen only when the model state does not fit.

PowerSGD is deliberately absent: it is unreliable on gloo (aborts with more than one bucket).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import Any

STRATEGIES = ("ddp", "ddp_fp16", "local_sgd", "fsdp")
AVERAGE_EVERY_COMM_TIMES = 5.0  # local SGD's period, in fp32 all-reduce times of compute


def overlap_steps(every: int) -> int:
    """Steps of training that one local-SGD average runs behind (and hides behind)."""
    return max(1, every) // 2
EXACT = {"ddp": True, "ddp_fp16": True, "fsdp": True, "local_sgd": False}


# --------------------------------------------------------------------------- cost model
def comm_seconds(
    name: str,
    param_bytes: int,
    world: int,
    latency_s: float,
    bandwidth_Bps: float,
    local_sgd_every: int = 1,
    compute_s: float = 0.0,
) -> float:
    """Predicted communication seconds per step for ``name`` (ring all-reduce model).

    DDP: ``latency + 2(N-1)/N * S / B``; fp16 halves ``S``; FSDP moves ~3(N-1)/N * S;
    local SGD pays one fp16 all-reduce (its progress is sent in fp16) once every ``H`` steps,
    less the ``H // 2`` steps of ``compute_s`` that it overlaps with.
    """
    if world <= 1 or math.isinf(bandwidth_Bps):
        return 0.0
    ring = (world - 1) / world * param_bytes / bandwidth_Bps
    if name == "ddp":
        return latency_s + 2 * ring
    if name == "ddp_fp16":
        return latency_s + ring
    if name == "fsdp":
        return 3 * latency_s + 3 * ring
    if name == "local_sgd":
        every = max(1, local_sgd_every)
        hidden = overlap_steps(every) * max(compute_s, 0.0)
        return max(0.0, latency_s + ring - hidden) / every
    raise ValueError(f"unknown strategy {name!r}")


def choose_strategy(
    *,
    param_bytes: int,
    world: int,
    compute_s: float,
    single_s: float,
    latency_s: float,
    bandwidth_Bps: float,
    min_memory_bytes: int,
    homogeneous_devices: bool = True,
) -> tuple[str, str, int]:
    """Return (strategy, human reason, local-SGD period H or 0).

    Exact strategies win whenever distributed training beats the fastest single device; local
    SGD only when even fp16 DDP would be slower than one device. Predictions assume no overlap
    of communication with compute (conservative).
    """
    state_bytes = 4 * param_bytes  # params + grads + two Adam moments
    if min_memory_bytes and state_bytes > 0.8 * min_memory_bytes and homogeneous_devices:
        return (
            "fsdp",
            f"model state (~{state_bytes / 1e9:.2f} GB) does not fit the smallest device, "
            "so parameters are sharded",
            0,
        )
    if world <= 1:
        return "ddp", "single rank: nothing to communicate", 0
    c_ddp = comm_seconds("ddp", param_bytes, world, latency_s, bandwidth_Bps)
    c_fp16 = comm_seconds("ddp_fp16", param_bytes, world, latency_s, bandwidth_Bps)
    sp_ddp = single_s / (compute_s + c_ddp)
    sp_fp16 = single_s / (compute_s + c_fp16)
    share = c_ddp / compute_s if compute_s > 0 else math.inf
    if share <= 0.3:
        return "ddp", f"all-reduce is {share:.0%} of compute per step", 0
    if sp_fp16 >= 1.15 * sp_ddp and sp_fp16 >= 1.0:
        return (
            "ddp_fp16",
            f"link-bound (all-reduce {share:.0%} of compute); fp16 gradients predict "
            f"{sp_fp16:.2f}x vs {sp_ddp:.2f}x",
            0,
        )
    if sp_ddp >= 1.0:
        return "ddp", f"all-reduce is {share:.0%} of compute; DDP still predicts {sp_ddp:.2f}x", 0
    # Averaging is hidden behind H // 2 steps of training but not free (flattening, the reduction
    # and the network stack take CPU from training on the same cores), so the period is five fp32
    # all-reduce times of compute: the overlap window covers an fp16 average five times over.
    # Shorter periods measured slower (docs/benchmarks.md, "Local SGD's averaging period").
    h = int(min(64, max(2, math.ceil(AVERAGE_EVERY_COMM_TIMES * c_ddp / max(compute_s, 1e-9)))))
    return (
        "local_sgd",
        f"even fp16 DDP would be slower than one device ({max(sp_ddp, sp_fp16):.2f}x); "
        f"parameters are averaged every {h} steps instead, in the background",
        h,
    )


# --------------------------------------------------------------------------- strategies
class Strategy:
    """How the model is wrapped and how ranks stay in sync (base: DDP)."""

    name = "ddp"
    exact = True

    def wrap(self, model: Any, device: Any) -> Any:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        if dist.get_world_size() == 1:
            # Nothing to average, but DDP's hooks and gradient buckets still cost 5-10 % of a
            # step on one CPU thread.
            return model
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, gradient_as_bucket_view=True)

    def after_step(self, model: Any, global_step: int, mine: int, total: int) -> float:
        """Called after each optimizer step; returns seconds spent communicating here."""
        return 0.0

    def no_sync(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """Backward passes inside keep their gradients local, to be summed with the next one
        (gradient accumulation): DDP's ``no_sync``; a single rank has nothing to hold back."""
        hold = getattr(model, "no_sync", None)
        return hold() if hold is not None else contextlib.nullcontext()

    def synchronize(self, model: Any) -> float:
        """Bring ranks to identical parameters (before checkpoints and at the end)."""
        return 0.0

    def begin(self, model: Any, total_steps: int) -> None:
        """Called once before the first step, after any resume: the parameters are the same
        on every rank, and the run will take ``total_steps`` (syncs may plan around the end)."""


class DDPStrategy(Strategy):
    name = "ddp"


class DDPFP16Strategy(Strategy):
    name = "ddp_fp16"

    def wrap(self, model: Any, device: Any) -> Any:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import (
            fp16_compress_hook,
        )

        ddp = super().wrap(model, device)
        if ddp is not model:  # a single rank has no gradients to compress
            ddp.register_comm_hook(state=None, hook=fp16_compress_hook)
        return ddp


class FSDPStrategy(Strategy):
    """FSDP2: shard each direct child that holds parameters, then the root."""

    name = "fsdp"

    def wrap(self, model: Any, device: Any) -> Any:
        import torch.distributed as dist
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import fully_shard

        mesh = DeviceMesh.from_group(dist.group.WORLD, device.type)
        for child in model.children():
            if any(p.requires_grad for p in child.parameters()):
                fully_shard(child, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    @contextlib.contextmanager
    def no_sync(self, model: Any) -> Iterator[None]:
        """FSDP2 keeps unsharded gradients and skips the reduce-scatter meanwhile."""
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)


class LocalSGDStrategy(Strategy):
    """Sample-weighted parameter averaging every ``every`` steps, overlapped with training.

    All ranks hold the same *anchor*, the parameters they last agreed on. At a sync step each
    rank snapshots its parameters and starts an asynchronous all-reduce, on a group of its own,
    of its weighted progress since the anchor, ``weight * (snapshot - anchor)``, in fp16 (half
    the bytes of the parameters themselves; progress is small and well inside fp16's range).
    ``overlap_steps(every)`` steps later (a fixed step, the same on every rank, so runs are
    reproducible) it waits for it, if it has not finished already; the new anchor is the old
    one plus the averaged progress, and each rank moves to ``anchor + (current - snapshot)``,
    keeping what it learnt meanwhile. Every rank adds the same reduced bits to the same anchor,
    so the ranks agree exactly on it; fp16 only rounds the averaged progress (relative 2^-11).
    Should an average overflow fp16, every rank sees it in the same reduced tensor and they
    average their parameters exactly instead. ``compress=False`` reduces the fp32 snapshots
    (no anchor needed). ``synchronize`` (checkpoints and the end) finishes any average in
    flight and then averages the progress since, blocking (fp16 progress like the background
    averages, or exact fp32 parameters without ``compress``), so every checkpoint holds one
    model. ``overlap=False`` averages in place, blocking and exact.
    """

    name = "local_sgd"
    exact = False

    def __init__(
        self, every: int, overlap: bool = True, timeout_s: float = 60.0, compress: bool = True
    ) -> None:
        self.every = max(1, int(every))
        self.timeout_s = timeout_s
        self.delay = overlap_steps(self.every) if overlap else 0
        self.compress = compress
        self._mine = 0
        self._total = 0
        self._end_step: int | None = None
        self._group: Any = None
        self._anchor: Any = None  # flat fp32 parameters every rank agreed on (compress only)
        # (work, tensor being reduced, local snapshot, step at which to apply, this rank's weight)
        self._pending: tuple[Any, Any, Any, int, float] | None = None

    def wrap(self, model: Any, device: Any) -> Any:
        import torch.distributed as dist

        from .launcher import side_group

        if self.delay and dist.get_world_size() > 1:
            self._group = side_group(self.timeout_s)  # every rank wraps at the same point
        return model

    def begin(self, model: Any, total_steps: int) -> None:
        self._end_step = total_steps
        if self._group is not None and self.compress:
            self._anchor = self._flat(self._tensors(model))  # identical on every rank here

    @staticmethod
    def _tensors(model: Any) -> list[Any]:
        tensors = [p.data for p in model.parameters()]
        return tensors + [b for b in model.buffers() if b.is_floating_point()]

    @staticmethod
    def _flat(tensors: list[Any]) -> Any:
        import torch

        return torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])

    @staticmethod
    def _pieces(tensors: list[Any], flat: Any) -> Iterator[tuple[Any, Any]]:
        """Each tensor with its part of ``flat``, shaped like it."""
        offset = 0
        for t in tensors:
            n = t.numel()
            yield t, flat[offset : offset + n].view_as(t)
            offset += n

    def _take_weight(self) -> float:
        """This rank's share of the samples since the last average; starts a new period."""
        weight = self._mine / self._total
        self._mine = self._total = 0
        return weight

    def after_step(self, model: Any, global_step: int, mine: int, total: int) -> float:
        spent = 0.0
        if self._pending is not None and global_step >= self._pending[3]:
            spent += self._apply_pending(model)
        self._mine += mine
        self._total += total
        if (global_step + 1) % self.every:
            return spent
        if self._group is None:
            return spent + self.synchronize(model)
        apply_at = global_step + self.delay
        if self._end_step is not None and apply_at >= self._end_step:
            # It would land after the last step: the final exact average would first wait for
            # it on the same link (two all-reduces back to back, ~1.1 s of 68 MB at 1 Gbit/s).
            # That average covers this period's progress anyway.
            return spent
        return spent + self._start(model, apply_at)

    def _start(self, model: Any, apply_at: int) -> float:
        import torch
        import torch.distributed as dist

        if self._total == 0:
            return 0.0
        start = time.perf_counter()
        weight = self._take_weight()
        snapshot = self._flat(self._tensors(model))
        if self._anchor is not None:
            sent = (snapshot - self._anchor).mul_(weight).to(torch.float16)
        else:
            sent = snapshot * weight
        work = dist.all_reduce(sent, group=self._group, async_op=True)
        self._pending = (work, sent, snapshot, apply_at, weight)
        return time.perf_counter() - start

    def _apply_pending(self, model: Any) -> float:
        import torch

        if self._pending is None:
            return 0.0
        start = time.perf_counter()
        work, reduced, snapshot, _, weight = self._pending
        self._pending = None
        work.wait()
        # delta: what the average moves this rank's snapshot by
        if self._anchor is None:
            delta = reduced.sub_(snapshot)
        elif bool(torch.isfinite(reduced).all()):
            self._anchor.add_(reduced.to(torch.float32))
            delta = torch.sub(self._anchor, snapshot, out=snapshot)
        else:  # the same reduced bits on every rank: all of them take this branch
            return time.perf_counter() - start + self._average_exactly(model, weight, self._group)
        for t, d in self._pieces(self._tensors(model), delta):
            t.add_(d.to(t.dtype))
        return time.perf_counter() - start

    def _average_exactly(self, model: Any, weight: float, group: Any = None) -> float:
        """Weighted fp32 average of the parameters themselves, blocking; resets the anchor."""
        import torch.distributed as dist

        start = time.perf_counter()
        tensors = self._tensors(model)
        flat = self._flat(tensors) * weight
        dist.all_reduce(flat, group=group)
        for t, average in self._pieces(tensors, flat):
            t.copy_(average)
        if self._anchor is not None:
            self._anchor = flat
        return time.perf_counter() - start

    def synchronize(self, model: Any) -> float:
        import torch.distributed as dist

        spent = self._apply_pending(model)
        if self._total == 0 or dist.get_world_size() == 1:
            self._mine = self._total = 0
            return spent
        weight = self._take_weight()
        if self._anchor is None:
            return spent + self._average_exactly(model, weight)
        return spent + self._average_progress(model, weight)

    def _average_progress(self, model: Any, weight: float) -> float:
        """Blocking fp16 average of the progress since the anchor; every rank ends on it.

        The end of training waits for this one on the link (68 MB of fp32 parameters took
        ~1 s at 1 Gbit/s), so it sends half the bytes like the background averages do; every
        rank adds the same reduced bits to the same anchor, so they still hold one model.
        """
        import torch
        import torch.distributed as dist

        start = time.perf_counter()
        tensors = self._tensors(model)
        current = self._flat(tensors)
        sent = (current - self._anchor).mul_(weight).to(torch.float16)
        dist.all_reduce(sent)
        if not bool(torch.isfinite(sent).all()):  # the same bits everywhere: all ranks agree
            return time.perf_counter() - start + self._average_exactly(model, weight)
        self._anchor.add_(sent.to(torch.float32))
        for t, average in self._pieces(tensors, self._anchor):
            t.copy_(average)
        return time.perf_counter() - start


def make_strategy(name: str, local_sgd_every: int = 8, timeout_s: float = 60.0) -> Strategy:
    """Instantiate a concrete strategy by name (``auto`` must be resolved before this).

    ``timeout_s`` bounds collectives on groups the strategy creates (torch gives new groups
    gloo's 30-minute default, which would hide a frozen peer), like the training group's.
    """
    if name == "ddp":
        return DDPStrategy()
    if name == "ddp_fp16":
        return DDPFP16Strategy()
    if name == "fsdp":
        return FSDPStrategy()
    if name == "local_sgd":
        return LocalSGDStrategy(local_sgd_every, timeout_s=timeout_s)
    raise ValueError(f"unknown strategy {name!r}; choose from {STRATEGIES} or 'auto'")
