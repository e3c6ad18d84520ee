"""The pieces of one rank's training step that users' own loops have: precision, gradient
accumulation, clipping, the learning-rate schedule, and the per-epoch evaluation.

They live here, apart from the rank process, so each is a plain object that a test can drive
on one process; ``rank_process.RankTrainer`` strings them together inside the process group.

Order within an optimizer step (the one PyTorch's AMP recipe gives): forward and loss under
``torch.autocast``; backward of the loss (scaled by the GradScaler for fp16) once per
micro-batch, the gradient all-reduce held back (``no_sync``) until the last; then unscale, clip
the total norm, step (the scaler skips a step whose gradients overflowed), update the scale,
step a per-step LR schedule.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

from .batches import call_model, logits_of, loss_of, target_of

__all__ = [
    "Precision",
    "StepRunner",
    "build_scheduler",
    "evaluate",
    "micro_batches",
    "scheduler_problem",
]

AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}


# --------------------------------------------------------------------------- precision
class Precision:
    """``torch.autocast`` for forward and loss, and fp16's gradient scaler.

    fp16 on a CPU is refused: torch's CPU autocast is made for bf16 and no scaler guards fp16
    gradients there. bf16 has float32's range, so it needs no scaler on either device.
    """

    def __init__(self, autocast: str | None, device: Any) -> None:
        import torch

        if autocast is not None and autocast not in AUTOCAST:
            raise ValueError(f"autocast={autocast!r}: choose 'bf16', 'fp16' or None")
        if autocast == "fp16" and device.type != "cuda":
            raise ValueError(
                f"autocast='fp16' needs a CUDA device, and this rank trains on {device}: use "
                "autocast='bf16' (CPUs and recent GPUs), or train on CUDA devices only "
                "(workers=)"
            )
        self.device_type = device.type
        self.dtype = getattr(torch, AUTOCAST[autocast]) if autocast else None
        self.scaler = torch.amp.GradScaler("cuda") if autocast == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Any) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: Any, parameters: Sequence[Any], clip: float | None) -> None:
        """Unscale, clip, step: the clip sees the true gradient, never a scaled one."""
        import torch

        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# --------------------------------------------------------------------------- LR schedule
def _is_plateau(obj: Any) -> bool:
    import torch

    cls = obj.func if isinstance(obj, functools.partial) else obj
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau
    return isinstance(obj, plateau) or (inspect.isclass(cls) and issubclass(cls, plateau))


def scheduler_problem(scheduler: Any, interval: str, has_eval: bool, built: bool = False
                      ) -> str | None:
    """Why this schedule cannot run as asked (None: it can): checked on its factory before the
    job, and again on the ranks with the ``built`` scheduler (a factory may hide its class)."""
    if scheduler is None:
        return None
    if not built and not callable(scheduler):
        return (f"lr_scheduler must be a factory optimizer -> scheduler (e.g. functools.partial("
                f"torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)), not "
                f"{type(scheduler).__name__}: a scheduler built here is bound to this "
                "process's optimizer")
    if _is_plateau(scheduler) and (interval != "epoch" or not has_eval):
        return ("lr_scheduler ReduceLROnPlateau is stepped with the evaluation loss once per "
                "epoch: pass eval_dataset= and lr_scheduler_interval='epoch'")
    return None


def build_scheduler(factory: Any, optimizer: Any, total: int) -> Any:
    """``factory(optimizer)``, with ``total_steps=total`` when the factory has that parameter
    and leaves it unset (OneCycleLR's and most users' own: the count the ranks know)."""
    if factory is None:
        return None
    try:
        param = inspect.signature(factory).parameters.get("total_steps")
    except (TypeError, ValueError):
        param = None
    if param is not None and param.default in (None, inspect.Parameter.empty):
        return factory(optimizer, total_steps=max(1, total))
    return factory(optimizer)


# --------------------------------------------------------------------------- one step
def micro_batches(indices: Any, n: int) -> list[Any]:
    """This rank's sample indices of one step in at most ``n`` non-empty pieces (an empty
    part stays one empty piece: the rank still joins the step's all-reduce)."""
    import torch

    count = int(indices.numel())
    if count == 0 or n <= 1:
        return [indices]
    return list(torch.tensor_split(indices, min(n, count)))


class StepRunner:
    """One optimizer step from its micro-batches, and the schedule around the steps.

    ``no_sync(model)`` is the strategy's (DDP's ``no_sync``): gradients of every micro-batch
    but the last stay local and the last backward all-reduces their sum, so accumulation costs
    no extra traffic. Each micro-batch's mean loss is weighted by its share of the rank's
    samples, so the summed gradient is that of the rank's whole part, which ``scale`` (the
    sharding's weight) turns into its share of the global batch.
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        loss_fn: Any,
        *,
        precision: Precision,
        no_sync: Callable[[Any], contextlib.AbstractContextManager[Any]],
        zero_loss: Callable[[Any], Any],
        accumulation: int = 1,
        clip_grad_norm: float | None = None,
        scheduler: Any = None,
        interval: str = "step",
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.loss_fn = loss_fn
        self.precision = precision
        self.no_sync = no_sync
        self.zero_loss = zero_loss
        self.accumulation = max(1, int(accumulation))
        self.clip = clip_grad_norm
        self.scheduler = scheduler
        self.interval = interval
        self._params = [p for p in model.parameters() if p.requires_grad]

    def step(self, indices: Any, fetch: Callable[[Any], Any], scale: float,
             do_step: bool = True) -> tuple[Any, float]:
        """Forward/backward every micro-batch of ``indices``, then the optimizer step (when
        ``do_step``). Returns the mean loss over the rank's samples (a tensor) and the seconds
        spent fetching and in forward and loss."""
        import time

        pieces = micro_batches(indices, self.accumulation)
        total = int(indices.numel())
        loss_sum: Any = 0.0
        forward_s = 0.0
        for j, piece in enumerate(pieces):
            n = int(piece.numel())
            last = j == len(pieces) - 1
            with contextlib.nullcontext() if last else self.no_sync(self.model):
                t0 = time.perf_counter()
                batch = fetch(piece)
                with self.precision.autocast():
                    out = call_model(self.model, batch, self.loss_fn)
                    loss = loss_of(out, target_of(batch), self.loss_fn) if n else \
                        self.zero_loss(out)
                forward_s += time.perf_counter() - t0
                weight = scale * (n / total if total else 1.0)
                self.precision.backward(loss if weight == 1.0 else loss * weight)
            if n:
                loss_sum = loss_sum + loss.detach().float() * n
        if do_step:
            self.precision.step(self.optimizer, self._params, self.clip)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scheduler is not None and self.interval == "step":
            self.scheduler.step()
        return (loss_sum / total if total else loss_sum), forward_s

    def end_epoch(self, eval_loss: float | None = None) -> None:
        """Step a per-epoch schedule (ReduceLROnPlateau with the evaluation loss)."""
        if self.scheduler is None or self.interval != "epoch":
            return
        if _is_plateau(self.scheduler):
            if eval_loss is not None and math.isfinite(eval_loss):
                self.scheduler.step(eval_loss)
        else:
            self.scheduler.step()


# --------------------------------------------------------------------------- evaluation
def evaluate(
    model: Any,
    dataset: Any,
    loss_fn: Any,
    metric: Callable[[Any, Any], float] | None,
    fetch: Callable[[Any], Any],
    *,
    rank: int,
    world: int,
    batch_size: int,
    precision: Precision,
    device: Any,
    lockstep: bool = False,
) -> dict[str, float]:
    """Evaluate on this rank's contiguous slice of ``dataset`` and sum the figures over the
    ranks (collective when ``world > 1``): ``loss``, ``accuracy`` (class logits and integer
    labels only), ``metric``, each a mean over the samples, and ``samples``.

    ``lockstep``: every rank runs the same number of forwards (FSDP gathers parameters inside
    each forward, a collective), a rank whose slice is used up repeating its first sample
    without counting it.
    """
    import torch
    import torch.distributed as dist

    size = len(dataset)
    start, end = size * rank // world, size * (rank + 1) // world
    mine = torch.arange(start, end)
    batches = math.ceil(math.ceil(size / world) / max(1, batch_size)) if lockstep else \
        math.ceil(len(mine) / max(1, batch_size))
    sums = torch.zeros(6, dtype=torch.float64)  # loss, n; correct, n; metric, n
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b in range(batches):
                idx = mine[b * batch_size:(b + 1) * batch_size]
                counted = int(idx.numel())
                if not counted:
                    idx = torch.tensor([min(start, size - 1)])
                batch = fetch(idx)
                with precision.autocast():
                    out = call_model(model, batch, loss_fn)
                    target = target_of(batch)
                    loss = loss_of(out, target, loss_fn) if loss_fn is not None or \
                        _carries_loss(out) else None
                if not counted:
                    continue
                if loss is not None:
                    sums[0] += float(loss.float()) * counted
                    sums[1] += counted
                correct = _correct(out, target)
                if correct is not None:
                    sums[2] += correct
                    sums[3] += counted
                if metric is not None:
                    sums[4] += float(metric(out, target)) * counted
                    sums[5] += counted
    finally:
        model.train(was_training)
    if world > 1:
        reduced = sums.to(device)
        dist.all_reduce(reduced)
        sums = reduced.cpu()
    out: dict[str, float] = {"samples": float(size)}
    for name, i in (("loss", 0), ("accuracy", 2), ("metric", 4)):
        if sums[i + 1] > 0:
            out[name] = float(sums[i] / sums[i + 1])
    return out


def _carries_loss(outputs: Any) -> bool:
    try:
        loss_of(outputs, None, None)
    except TypeError:
        return False
    return True


def _correct(outputs: Any, target: Any) -> int | None:
    """Correct predictions when ``outputs`` are class logits for integer labels, else None."""
    import torch

    logits = logits_of(outputs)
    if logits is None or not isinstance(target, torch.Tensor):
        return None
    if logits.dim() != 2 or logits.shape[1] < 2 or target.dim() != 1 \
            or target.shape[0] != logits.shape[0] or target.is_floating_point():
        return None
    return int((logits.argmax(1) == target.to(logits.device)).sum())
