"""The job description shipped to every rank, and how user objects become per-rank objects.

Users may pass objects or zero-argument factories (optimizer: a factory taking parameters, or an
optimizer instance whose class and defaults are reused). Factories are preferred for anything
big (they run on the worker instead of being pickled from the notebook), and objects are
accepted for convenience in notebooks. Every rank seeds torch identically before calling a
model factory, and the replicas are compared (rank 0's weights broadcast where they differ), so
all replicas start equal.

Batch convention: a dataset item (or a ``TensorDataset`` row) is a tuple whose last element is
the target; ``loss_fn(model(*inputs), target)`` must return the *mean* loss over the batch.
Dict items (tokenised Hugging Face data sets) become a dict of tensors and the model is called
``model(**batch)`` (:mod:`.batches`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .options import (
    CheckpointOptions,
    CommunicationOptions,
    DataOptions,
    MetricsOptions,
    OptimizationOptions,
    PlacementOptions,
)


@dataclass
class JobSpec:
    """Immutable description of one training job (identical for every rank and attempt)."""

    job_id: str
    user_objects: bytes  # cloudpickle of USER_OBJECTS (pack_user_objects)
    epochs: int
    global_batch: int
    # train()'s settings (their defaults: the option groups of .options)
    strategy: str = CommunicationOptions.strategy
    seed: int = DataOptions.seed
    shuffle: bool = DataOptions.shuffle
    checkpoint_every: int = CheckpointOptions.every
    max_steps: int | None = DataOptions.max_steps
    metrics_interval: float = MetricsOptions.interval
    torch_threads: int | None = PlacementOptions.torch_threads
    shares: Sequence[float] | None = PlacementOptions.shares
    local_sgd_every: int | None = CommunicationOptions.local_sgd_every
    grad_accumulation: int = DataOptions.grad_accumulation
    lr_scheduler_interval: str = OptimizationOptions.lr_scheduler_interval
    clip_grad_norm: float | None = OptimizationOptions.clip_grad_norm
    autocast: str | None = OptimizationOptions.autocast
    preflight_steps: int = 5
    control_every: int = 10  # minimum steps between stop votes (see stop_vote.vote_every)
    # The final checkpoint carries the optimizer state only when it is kept for a later resume
    # (a checkpoint_dir); for the trained model alone it would double what rank 0 ships.
    final_optimizer: bool = True
    #: what makes two jobs "the same job" for ``auto``'s remembered placement (the driver's);
    #: pickles of equal objects differ from call to call, so it is built from their shapes
    same_job: str = ""

    @property
    def metrics_topic(self) -> str:
        return f"parallalx-train-metrics-{self.job_id}"

    @property
    def ship_topic(self) -> str:
        """Event topic carrying rank 0's preflight report and checkpoints (see ``rank.py``)."""
        return f"parallalx-train-ship-{self.job_id}"


@dataclass
class AttemptPayload:
    """What one attempt ships to its ranks (one copy per worker, each attempt).

    The job itself (the user's model and data: the big part) travels to each worker once per
    job, beside it (:func:`with_job`): a restart re-ships only the resume point and the plan.
    """

    #: None in transit from the driver; the rank task joins it with the job (:func:`with_job`)
    job: JobSpec | None
    resume: bytes | None = None
    strategy: str | None = None  # fixed after the first attempt so restarts keep the maths
    local_sgd_every: int | None = None
    shares: list[float] | None = None  # the job's, while its ranks are the ones they name
    #: ``auto`` may leave devices idle (``placement.py``): the ranks measure and decide
    choose_devices: bool = False
    #: why ``strategy`` is fixed, when not because the caller asked for it
    strategy_reason: str | None = None
    #: the placement decision that formed this group, repeated in its report
    placement: str = ""
    #: worker address -> the device's name, for reports
    names: dict[str, str] | None = None


def with_job(shipped: AttemptPayload | tuple[AttemptPayload, JobSpec]) -> AttemptPayload:
    """The attempt's payload joined with the job it belongs to, as a rank task receives them
    (the driver's ``(attempt payload, job)`` per worker; a bare payload carries its job)."""
    if isinstance(shipped, tuple):
        payload, job = shipped
        return replace(payload, job=job)
    if shipped.job is None:
        raise TypeError("an attempt payload without its job")
    return shipped


# --------------------------------------------------------------------------- user objects
#: the user's objects a training job ships, in their order in ``JobSpec.user_objects``
USER_OBJECTS = ("model", "dataset", "loss_fn", "optimizer",
                "collate_fn", "lr_scheduler", "eval_dataset", "eval_metric")


def pack_user_objects(model: Any, dataset: Any, loss_fn: Any, optimizer: Any,
                      **optional: Any) -> bytes:
    """Serialize the user's objects with cloudpickle, once, in the notebook.

    Dask would use plain pickle for our own payload and so pickle the user's classes *by
    reference*, which fails on a worker that cannot import the user's module. With cloudpickle
    classes from ``__main__`` (notebooks) travel by value, and so do those of any module the
    user registers with ``cloudpickle.register_pickle_by_value``.
    """
    given = {"model": model, "dataset": dataset, "loss_fn": loss_fn, "optimizer": optimizer,
             **optional}
    unknown = set(given) - set(USER_OBJECTS)
    if unknown:
        raise TypeError(f"pack_user_objects: unknown object(s) {sorted(unknown)}")
    return dumps_for_workers({name: given.get(name) for name in USER_OBJECTS})


def dumps_for_workers(named: dict[str, Any]) -> bytes:
    """cloudpickle the objects, as a tuple in ``named``'s order, to send them to the workers.

    When one cannot travel (a lock or a socket inside it), the error names that
    argument and the way out, instead of pickle's bare "cannot pickle '_thread.lock' object".
    """
    import cloudpickle

    try:
        return cloudpickle.dumps(tuple(named.values()))
    except Exception as err:
        culprit = "the job's objects"
        for name, obj in named.items():
            try:
                cloudpickle.dumps(obj)
            except Exception:
                culprit = name
                break
        raise cannot_ship(culprit, err, named.get(culprit)) from None


#: user objects that are functions called on the workers (not objects a factory could build)
_FUNCTIONS = ("objective", "collate_fn", "lr_scheduler", "eval_metric")


def cannot_ship(name: str, err: BaseException, obj: Any = None) -> TypeError:
    """The error for a user object that cannot be copied to the workers, with the way out:
    which one depends on what was given (a factory already travels as its code and what it
    closes over, so "pass a factory" would send its caller in a circle)."""
    inside = "create what cannot be copied (a lock, a connection) inside the function"
    if name in _FUNCTIONS or name.startswith("fn"):
        way_out = inside
    elif callable(obj) and not _is_module(obj):
        way_out = f"{name} is a factory already: {inside}, not in the code around it"
    elif name == "optimizer":
        way_out = ("pass a factory of the parameters instead (e.g. optimizer=lambda params: "
                   "torch.optim.SGD(params, lr=0.1)), so each device builds its own")
    else:
        way_out = (f"pass a zero-argument factory instead (e.g. {name}=lambda: ...), so each "
                   "device builds its own")
    return TypeError(
        f"{name} cannot be sent to the workers ({type(err).__name__}: {err}); {way_out}"
    )


def unpack_user_objects(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`pack_user_objects` (by name), with a hint when a module is missing."""
    import cloudpickle

    try:
        return dict(zip(USER_OBJECTS, cloudpickle.loads(blob), strict=True))
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{exc}. The worker cannot import code the job refers to: install it in the "
            "worker's environment, or call cloudpickle.register_pickle_by_value(module) in the "
            "notebook before train()"
        ) from exc


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def build_model(model: Any) -> Any:
    """A fresh module from a module object (as shipped) or a zero-argument factory."""
    if _is_module(model):
        return model
    if callable(model):
        out = model()
        if not _is_module(out):
            raise TypeError(f"model factory returned {type(out).__name__}, not a torch Module")
        return out
    raise TypeError("model must be a torch.nn.Module or a zero-argument factory returning one")


def tensor_columns(dataset: Any, what: str = "dataset") -> Any:
    """``(x, y)`` columns as tensors of one length each, else ``dataset`` unchanged.

    NumPy arrays (what scikit-learn hands out) become tensors, so ``(X, y)`` from
    ``load_digits`` trains as it reads, instead of passing for a data set of two items; columns
    of different lengths are the caller's mistake, named here rather than by TensorDataset's
    bare "Size mismatch between tensors" from a worker.
    """
    import torch

    if not isinstance(dataset, tuple) or not dataset:
        return dataset
    arrays = all(isinstance(t, torch.Tensor) or _is_ndarray(t) for t in dataset)
    if not arrays:
        return dataset
    if any(_is_ndarray(t) for t in dataset):
        try:
            dataset = tuple(t if isinstance(t, torch.Tensor) else torch.as_tensor(t)
                            for t in dataset)
        except (TypeError, ValueError, RuntimeError) as err:  # object arrays, strings
            raise TypeError(f"{what}: a NumPy column cannot become a tensor ({err}); "
                            "pass numeric arrays or tensors") from None
    lengths = [int(t.shape[0]) if t.dim() else None for t in dataset]
    if None in lengths or len(set(lengths)) > 1:
        shown = ", ".join("a scalar" if n is None else f"{n:,}" for n in lengths)
        raise ValueError(f"{what}: the columns of (x, y) need one row per sample each; their "
                         f"lengths are {shown}")
    return dataset


def _is_ndarray(obj: Any) -> bool:
    """Without importing NumPy where the caller never used it."""
    return type(obj).__module__ == "numpy" and type(obj).__name__ == "ndarray"


def build_dataset(dataset: Any) -> Any:
    """Dataset object, ``(X, y)`` tensor tuple, or zero-argument factory of either."""
    import torch
    from torch.utils.data import TensorDataset

    if isinstance(dataset, tuple) and all(isinstance(t, torch.Tensor) for t in dataset):
        return TensorDataset(*tensor_columns(dataset))
    if hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        return dataset
    if callable(dataset):
        return build_dataset(dataset())
    raise TypeError("dataset must be a map-style Dataset, a tuple of tensors, or a factory")


def _zero_arg(fn: Any) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    return all(
        p.default is not inspect.Parameter.empty
        or p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for p in sig.parameters.values()
    )


def build_loss(loss_fn: Any) -> Callable[[Any, Any], Any] | None:
    """Loss callable from a loss module/function, a loss class, or a zero-argument factory;
    None stays None (the model's output carries the loss: :func:`.batches.loss_of`)."""
    if loss_fn is None or _is_module(loss_fn):
        return loss_fn
    if inspect.isclass(loss_fn):
        return loss_fn()
    if callable(loss_fn) and _zero_arg(loss_fn):
        return loss_fn()
    if callable(loss_fn):
        return loss_fn
    raise TypeError("loss_fn must be callable as loss_fn(output, target)")


def optimizer_factory(optimizer: Any) -> Callable[[Any], Any]:
    """Normalize to ``factory(params) -> Optimizer`` (picklable).

    An optimizer *instance* is bound to the notebook's parameters, so only its class and
    ``defaults`` are reused (per-group settings collapse to one group).
    """
    import torch

    if isinstance(optimizer, torch.optim.Optimizer):
        return functools.partial(type(optimizer), **dict(optimizer.defaults))
    if callable(optimizer):
        return optimizer
    raise TypeError("optimizer must be an Optimizer, or a factory taking the parameters")


# --------------------------------------------------------------------------- batches
def fetch(dataset: Any, indices: Any, collate_fn: Any = None) -> Any:
    """Collate the samples at ``indices``: a tuple, or a dict for dict items (fast path for
    TensorDataset-like objects; ``collate_fn`` as a DataLoader's: :func:`.batches.collate`)."""
    import torch

    from .batches import collate

    tensors = getattr(dataset, "tensors", None)
    if tensors is not None and collate_fn is None:
        # index_select: half the cost of t[indices] on the step's path
        return tuple(
            t.index_select(0, indices.to(t.device)) if isinstance(t, torch.Tensor) else t[indices]
            for t in tensors
        )
    return collate([dataset[int(i)] for i in indices], collate_fn)


def empty_like_batch(dataset: Any, collate_fn: Any = None) -> Any:
    """A zero-sample batch with the right shapes (for a rank with nothing in the last step)."""
    import torch

    one = fetch(dataset, torch.zeros(1, dtype=torch.long), collate_fn)
    if isinstance(one, dict):
        return {k: t[:0] if isinstance(t, torch.Tensor) else t for k, t in one.items()}
    return tuple(t[:0] if isinstance(t, torch.Tensor) else t for t in one)


def to_device(obj: Any, device: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def zero_loss(output: Any) -> Any:
    """A loss of exactly 0 that still touches the whole graph (empty-batch ranks)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output.sum() * 0.0
    if isinstance(output, (list, tuple)):
        return sum(zero_loss(o) for o in output)
    if isinstance(output, dict):
        return sum(zero_loss(o) for o in output.values())
    return torch.zeros(())
