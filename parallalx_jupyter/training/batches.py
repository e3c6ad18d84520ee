"""Batches as users' data sets give them: collating items, calling the model, finding the loss.

Two forms of batch travel through the training loop:

* a tuple ``(inputs..., target)`` (``TensorDataset`` rows, ``(X, y)`` tensors): the model is
  called ``model(*inputs)`` and the loss is ``loss_fn(outputs, target)``;
* a dict of tensors, from dict items (tokenised Hugging Face data sets) or a ``collate_fn``
  returning one: the model is called ``model(**batch)``. With a ``loss_fn`` the target is
  taken out of the batch first (key ``labels``, else ``label``); without one the whole batch
  goes in and the output carries the loss (``outputs.loss`` or ``outputs["loss"]``, as Hugging
  Face models return when the batch holds ``labels``, or a scalar tensor).

The messages here name what was received and the way out, because torch's own ("stack expects
each tensor to be equal size", "forward() takes 2 positional arguments but 3 were given") blame
the model for what is a data/model mismatch. :func:`check_sample` runs them on the main device
before any worker starts (one batch of the first items, the forward's signature: no forward
pass), so a mistake is reported once, not by every rank.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "TARGET_KEYS",
    "call_model",
    "check_sample",
    "collate",
    "logits_of",
    "loss_of",
    "target_of",
]

#: where a dict batch keeps its target, first found wins (Hugging Face's names)
TARGET_KEYS = ("labels", "label")

_COLLATE_HINT = ("pad them to one length (e.g. tokenizer(..., padding='max_length')) or pass "
                 "collate_fn= (e.g. transformers.DataCollatorWithPadding(tokenizer))")


# --------------------------------------------------------------------------- collation
def collate(items: Sequence[Any], collate_fn: Any = None) -> tuple[Any, ...] | dict[str, Any]:
    """One batch from dataset items: ``collate_fn(items)`` if given, else tensors stacked
    (dict items key by key). A tuple, or a dict when the items or ``collate_fn`` give one."""
    if collate_fn is not None:
        batch = collate_fn(list(items))
    elif items and isinstance(items[0], Mapping):
        batch = _collate_dicts(items)
    else:
        batch = _default_collate(items)
    if isinstance(batch, Mapping):  # a transformers BatchEncoding is a Mapping, not a dict
        return dict(batch)
    return tuple(batch) if isinstance(batch, (list, tuple)) else (batch,)


def _default_collate(items: Sequence[Any]) -> Any:
    from torch.utils.data import default_collate

    try:
        return default_collate(list(items))
    except RuntimeError as err:
        if "equal size" not in str(err) and "same size" not in str(err):
            raise
        first = items[0]
        parts = first if isinstance(first, (list, tuple)) else (first,)
        for pos in range(len(parts)):
            shapes = {tuple(_shape(it[pos] if isinstance(it, (list, tuple)) else it))
                      for it in items}
            if len(shapes) > 1:
                raise ValueError(
                    f"dataset items differ in size at element {pos} "
                    f"(shapes {sorted(shapes)[:3]}): {_COLLATE_HINT}"
                ) from None
        raise


def _shape(value: Any) -> tuple[int, ...]:
    """A tensor's or array's shape, a list's length (enough to tell unequal items apart)."""
    if hasattr(value, "shape"):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return (len(value),)
    return ()


def _collate_dicts(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Key by key: tensors stacked, numbers and equal-length lists of numbers made tensors
    (what ``datasets`` gives without ``set_format("torch")``), anything else kept as a list."""
    import torch

    keys = list(items[0])
    missing = [k for it in items for k in keys if k not in it]
    if missing:
        raise ValueError(f"dataset items have different keys ('{missing[0]}' is not in every "
                         "item): pass collate_fn= to build the batch yourself")
    out: dict[str, Any] = {}
    for key in keys:
        values = [it[key] for it in items]
        first = values[0]
        if isinstance(first, (torch.Tensor, list, tuple)) or _is_number(first) \
                or hasattr(first, "shape"):
            shapes = {_shape(v) for v in values}
            if len(shapes) > 1:
                raise ValueError(
                    f"dataset items are dicts whose '{key}' differs in size between items "
                    f"({', '.join(str(list(s)) for s in sorted(shapes)[:3])}): {_COLLATE_HINT}"
                )
            out[key] = (torch.stack(values) if isinstance(first, torch.Tensor)
                        else _as_array(values))
        else:
            out[key] = values  # strings, ids: the model gets them as a list
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (bool, int, float)) and not isinstance(value, str)


def _as_array(values: list[Any]) -> Any:
    import torch

    try:
        return torch.as_tensor(values)
    except (TypeError, ValueError):  # numpy arrays in a list: stack them
        return torch.stack([torch.as_tensor(v) for v in values])


# --------------------------------------------------------------------------- the model call
def target_of(batch: tuple[Any, ...] | dict[str, Any]) -> Any:
    """The batch's target: a tuple's last element, a dict's ``labels`` (None: none there)."""
    if isinstance(batch, dict):
        return next((batch[k] for k in TARGET_KEYS if k in batch), None)
    return batch[-1] if len(batch) else None


def _arguments(batch: tuple[Any, ...] | dict[str, Any],
               loss_fn: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """What the model is called with (see the module docstring)."""
    if isinstance(batch, dict):
        if loss_fn is None:
            return (), batch
        return (), {k: v for k, v in batch.items() if k not in TARGET_KEYS}
    if loss_fn is None:
        return tuple(batch), {}
    if len(batch) < 2:
        raise ValueError("each sample must be a tuple (inputs..., target), or a dict")
    return tuple(batch[:-1]), {}


def call_model(model: Any, batch: tuple[Any, ...] | dict[str, Any], loss_fn: Any) -> Any:
    """The model's outputs for ``batch``; a call that does not fit the forward's signature is
    a ``TypeError`` saying how the model was called and the way out."""
    args, kwargs = _arguments(batch, loss_fn)
    try:
        return model(*args, **kwargs)
    except TypeError as err:
        text = call_mismatch(model, args, kwargs)
        if text is None:
            raise
        raise TypeError(text) from err


def _forward_of(model: Any) -> Any:
    """The user's forward under a wrapper (DDP's takes anything)."""
    inner = getattr(model, "module", None)
    return getattr(inner if inner is not None else model, "forward", model)


def call_mismatch(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str | None:
    """Why ``model(*args, **kwargs)`` does not fit the forward's signature (None: it does)."""
    try:
        sig = inspect.signature(_forward_of(model))
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
        return None
    except TypeError as err:
        why = str(err)
    shown = f"forward{sig}"
    params = sig.parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params)
    if kwargs:
        unknown = [k for k in kwargs if k not in named and not takes_kwargs]
        missing = [p.name for p in params if p.default is p.empty
                   and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and p.name not in kwargs]
        detail = (f"it takes no {', '.join(repr(k) for k in unknown)}" if unknown
                  else f"it needs {', '.join(repr(k) for k in missing)}" if missing else why)
        return (f"items are dicts, so the model is called model(**batch) with keys "
                f"{list(kwargs)}, and its {shown} does not fit ({detail}): pass a model whose "
                "forward takes these keyword arguments, or collate_fn= returning a tuple "
                "(inputs..., target)")
    keyword_only = [p.name for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if keyword_only or any(p.kind == p.VAR_KEYWORD for p in params) and not any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            for p in params):
        return (f"the model is called with {len(args)} positional tensor(s) (each item's "
                f"elements before the target), but its {shown} takes keyword arguments: make "
                "the dataset items dicts (the model is then called model(**batch)), or pass "
                "collate_fn= returning a dict")
    return (f"the model is called with {len(args)} positional tensor(s) (each item's elements "
            f"before the target; without loss_fn all of them), and its {shown} does not fit "
            f"({why}): make the items (inputs..., target) to match, or pass collate_fn=")


def loss_of(outputs: Any, target: Any, loss_fn: Any) -> Any:
    """The step's loss: ``loss_fn(outputs, target)``, or without a ``loss_fn`` the one the
    outputs carry (a scalar tensor, ``outputs.loss``, ``outputs["loss"]``)."""
    import torch

    if loss_fn is not None:
        return loss_fn(outputs, target)
    if isinstance(outputs, torch.Tensor) and outputs.dim() == 0:
        return outputs
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else getattr(outputs, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    raise TypeError(
        f"loss_fn is None, so the model's output must carry the loss (outputs.loss or "
        f"outputs['loss'], or a scalar tensor), but it is a {type(outputs).__name__} without "
        "one: pass loss_fn=, or put the targets in each item under 'labels' (Hugging Face "
        "models then return the loss)"
    )


def logits_of(outputs: Any) -> Any:
    """The class scores in ``outputs`` (a tensor, ``.logits`` or ``["logits"]``), or None."""
    import torch

    if isinstance(outputs, torch.Tensor):
        return outputs
    found = (outputs.get("logits") if isinstance(outputs, Mapping)
             else getattr(outputs, "logits", None))
    return found if isinstance(found, torch.Tensor) else None


# --------------------------------------------------------------------------- before the job
def check_sample(model: Any, dataset: Any, loss_fn: Any, collate_fn: Any = None,
                 items: int = 2, what: str = "dataset") -> None:
    """Collate the first ``items`` items of ``dataset`` and check the model can be called with
    the batch, in this process, before any worker starts. Factories are not called here (they
    may be expensive, and they run on the workers): what they make is checked on the ranks,
    and so is anything that is no data set at all.
    Raises ``ValueError``/``TypeError`` with the message the ranks would give."""
    from .spec import _is_module, build_dataset

    if not (_is_indexable(dataset) or isinstance(dataset, tuple)):
        return  # a factory, or something the ranks refuse with their own message
    data = build_dataset(dataset)
    n = min(items, len(data))
    if n == 0:
        raise ValueError(f"the {what} is empty")
    try:
        batch = collate([data[i] for i in range(n)], collate_fn)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{what}: {err}") from None
    if not _is_module(model):
        return
    args, kwargs = _arguments(batch, loss_fn)
    text = call_mismatch(model, args, kwargs)
    if text is not None:
        raise TypeError(text)


def _is_indexable(obj: Any) -> bool:
    return hasattr(obj, "__len__") and hasattr(obj, "__getitem__")
