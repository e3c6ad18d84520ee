"""Whether a new job may continue from the checkpoints in its ``checkpoint_dir``, and saying so.

A ``checkpoint_dir`` outlives the job that wrote it, so the next ``train()`` given it may be the
same job again (continue it), the same job already done (continuing would train nothing and
hand the old model back), or another job (other model, optimizer, data set or batch: loading it
fails on every rank, which was once retried as a lost device). Each checkpoint therefore
carries a *fingerprint* of its job (parameter names and shapes, optimizer class, data set
length, global batch) and, from the rank side, ``total_steps`` and ``finished``. The policy:

* the checkpoint already reached the last step this job would train: its files are moved
  aside into ``<dir>/finished-<time>/`` (nothing is lost, the new run's files do not mix with
  them) and the job starts fresh, saying so;
* otherwise the fingerprints must match, and the job says "resuming from step N of <file>";
  a mismatch is one :class:`CheckpointMismatchError` naming what differs, raised in the
  notebook before anything runs where the notebook can tell (objects, not factories), else
  by the ranks before their preflight;
* a checkpoint from before fingerprints resumes as it always did, saying it was not checked.

Hyper-parameters (lr, momentum, ...) are what the user asks for now, not part of the job's
identity: after a checkpoint of another job is loaded the new optimizer's values win, and the
job says which differ from the checkpoint's.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import CheckpointStore, unpack
from .errors import CheckpointMismatchError

FINISHED_PREFIX = "finished-"
_SHOWN = 5  # differences named in one error

#: one fingerprint: plain types only (checkpoints load with ``weights_only=True``)
Fingerprint = dict[str, Any]


# --------------------------------------------------------------------------- fingerprints
def model_params(model: Any) -> list[list[Any]]:
    """``[[name, shape], ...]`` of the parameters; shape None where a lazy module has none yet."""
    from torch.nn.parameter import is_lazy

    return [
        [name, None if is_lazy(p) else [int(d) for d in p.shape]]
        for name, p in model.named_parameters()
    ]


def optimizer_name(optimizer: Any) -> str | None:
    """Class name of an optimizer, or of what a factory (class, ``functools.partial``) builds;
    None for a factory that is only known by running it (a lambda)."""
    import torch

    target = optimizer
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, torch.optim.Optimizer):
        return type(target).__qualname__
    if inspect.isclass(target) and issubclass(target, torch.optim.Optimizer):
        return target.__qualname__
    return None


def dataset_length(dataset: Any) -> int | None:
    """Length of a data set as ``train()`` takes it, None for a factory (not run here)."""
    import torch

    if isinstance(dataset, tuple) and dataset and all(isinstance(t, torch.Tensor) for t in dataset):
        return int(dataset[0].shape[0]) if dataset[0].dim() else None
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        try:
            return int(len(dataset))
        except Exception:  # the data set's own error shows on the ranks, as the user's
            return None
    return None


def fingerprint(
    *,
    params: list[list[Any]] | None,
    optimizer: str | None,
    dataset_len: int | None,
    global_batch: int | None,
) -> Fingerprint:
    """A job's fingerprint; None marks a part not known here (checked by the ranks)."""
    return {
        "params": params,
        "optimizer": optimizer,
        "dataset_len": dataset_len,
        "global_batch": global_batch,
    }


def saved_fingerprint(meta: Mapping[str, Any]) -> tuple[Fingerprint, bool]:
    """The fingerprint a checkpoint's meta carries, and whether it has one at all (older
    checkpoints hold only the data set length and the global batch)."""
    saved = meta.get("fingerprint")
    if isinstance(saved, Mapping):
        return dict(saved), True
    return fingerprint(params=None, optimizer=None, dataset_len=meta.get("dataset_len"),
                       global_batch=meta.get("global_batch")), False


def differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two fingerprints (parts unknown on either side are skipped)."""
    out: list[str] = []
    old, new = saved.get("params"), now.get("params")
    if old is not None and new is not None:
        a = {str(n): s for n, s in old}
        b = {str(n): s for n, s in new}
        for name, shape in a.items():
            if name not in b:
                out.append(f"parameter {name} is in the checkpoint, not in this model")
            elif shape is not None and b[name] is not None and list(shape) != list(b[name]):
                out.append(f"parameter {name} has shape {tuple(shape)} in the checkpoint, "
                           f"{tuple(b[name])} now")
        out += [f"parameter {name} is in this model, not in the checkpoint"
                for name in b if name not in a]
    for key, what in (("optimizer", "optimizer"), ("dataset_len", "data set length"),
                      ("global_batch", "global batch (batch_size)")):
        if saved.get(key) is not None and now.get(key) is not None and saved[key] != now[key]:
            out.append(f"{what} {saved[key]} in the checkpoint, {now[key]} now")
    if len(out) > _SHOWN:
        out = [*out[:_SHOWN], f"{len(out) - _SHOWN} more difference(s)"]
    return out


def mismatch_message(where: str, diffs: list[str]) -> str:
    return (f"{where} was made by another job: {'; '.join(diffs)}. Use another checkpoint_dir, "
            "or move its checkpoint files away to start fresh")


def total_steps(epochs: int, dataset_len: int, global_batch: int, max_steps: int | None) -> int:
    """Steps the job trains (as the ranks count them: the last batch of an epoch may be partial)."""
    total = epochs * math.ceil(dataset_len / global_batch)
    return total if max_steps is None else min(total, max_steps)


# ------------------------------------------------------------------ the notebook's decision
@dataclass
class ResumePlan:
    """How a job starts: ``none`` (nothing to resume), ``resume`` or ``fresh``."""

    action: str
    step: int = 0
    path: Path | None = None
    text: str = ""
    #: how far the notebook could tell it is the same job
    checked: str = ""
    set_aside: Path | None = None
    notes: list[str] = field(default_factory=list)


def plan_resume(
    store: CheckpointStore, now: Fingerprint, *, epochs: int, max_steps: int | None
) -> ResumePlan:
    """Decide from the newest checkpoint in ``store`` (see the module docstring); raises
    :class:`CheckpointMismatchError` for another job's unfinished checkpoint."""
    data = store.latest()
    if data is None or store.directory is None:
        return ResumePlan("none")
    state = unpack(data)
    meta = state.get("meta") or {}
    step = int(state["global_step"])
    path = store.last_path
    name = path.name if path is not None else "the checkpoint in memory"
    saved, complete = saved_fingerprint(meta)
    # Steps as the checkpoint's job counts them under this call's epochs/max_steps: the same
    # answer whether or not the notebook knows the data set (a factory), and a changed data
    # set or batch is refused below only for a run that is not finished.
    length = saved.get("dataset_len") or now.get("dataset_len")
    batch = saved.get("global_batch") or now.get("global_batch")
    total = total_steps(epochs, int(length), int(batch), max_steps) if length and batch else None
    if total is not None and step >= total:
        if meta.get("finished"):
            what = f"a finished run (step {step} of {meta.get('total_steps', step)}, {name})"
        else:
            what = f"a run at step {step} ({name}), as far as this job trains ({total} steps)"
        aside = store.set_aside(FINISHED_PREFIX)
        return ResumePlan(
            "fresh", step=0, path=path, set_aside=aside,
            text=f"checkpoint_dir {store.directory} holds {what}: starting fresh (its files "
                 f"are kept in {aside})",
        )  # fmt: skip
    diffs = differences(saved, now)
    if diffs:
        raise CheckpointMismatchError(mismatch_message(f"{path or 'the checkpoint'}", diffs))
    if not complete:
        checked = ("not checked: the checkpoint predates job fingerprints, so nothing tells "
                   "whether it is the same job")
    elif all(now.get(k) is not None for k in ("params", "optimizer", "dataset_len")):
        checked = "the same job: model, optimizer, data set and batch match"
    else:
        unknown = [w for k, w in (("params", "model"), ("optimizer", "optimizer"),
                                  ("dataset_len", "data set")) if now.get(k) is None]
        checked = (f"checked here except the {', '.join(unknown)} (given as factories): "
                   "the ranks check those")
    return ResumePlan("resume", step=step, path=path,
                      text=f"resuming from step {step} of {path or name}", checked=checked)


# --------------------------------------------------------------------------- hyper-parameters
def asked_hyperparameters(optimizer: Any) -> list[dict[str, Any]]:
    """The optimizer's param-group settings as built (before a checkpoint overwrites them)."""
    return [copy.deepcopy({k: v for k, v in g.items() if k != "params"})
            for g in optimizer.param_groups]


def unscheduled(asked: list[dict[str, Any]], optimizer: Any) -> list[dict[str, Any]]:
    """The asked settings an LR scheduler does not own: building one changed the others (and
    sets ``lr`` from then on), so the checkpoint's values of those must stay."""
    return [{k: v for k, v in mine.items()
             if k not in ("lr", "initial_lr") and k in group and _same(group[k], v)}
            for mine, group in zip(asked, optimizer.param_groups, strict=False)]


def keep_asked_hyperparameters(optimizer: Any, asked: list[dict[str, Any]]) -> list[str]:
    """Put the asked settings back after loading a checkpoint; one line per one that differed."""
    notes: list[str] = []
    several = len(optimizer.param_groups) > 1
    for i, (group, mine) in enumerate(zip(optimizer.param_groups, asked, strict=False)):
        for key, value in mine.items():
            if key in group and _same(group[key], value):
                continue
            had = f"the checkpoint had {_show(group[key])}" if key in group else \
                "not in the checkpoint"
            notes.append(f"{f'group {i} ' if several else ''}{key} {_show(value)} as asked "
                         f"({had})")
            group[key] = value
    return notes


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return bool(torch.equal(torch.as_tensor(a), torch.as_tensor(b)))
        except Exception:
            return False
    try:
        return bool(a == b)
    except Exception:
        return False


def _show(value: Any) -> str:
    import torch

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    return repr(value)[:80]
