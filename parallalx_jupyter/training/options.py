"""``train()``'s options in typed groups: the one definition of each setting and its default.

Each group is a frozen dataclass that ``train()`` takes under its own keyword::

    train(model, dataset, loss_fn, optimizer,
          data=DataOptions(epochs=10, batch_size=128),
          checkpoint=CheckpointOptions(dir="ckpt", every=50),
          recovery=RecoveryOptions(max_restarts=5))

Every setting also keeps its flat keyword (``checkpoint_dir=`` is ``CheckpointOptions.dir``,
``epochs=`` is ``DataOptions.epochs``; :data:`PARAMETERS` lists them all). A group object
fixes every setting of its group, its defaults included, so a flat keyword given together
with its group is refused (one ``TypeError`` naming both): change one setting of a group with
``dataclasses.replace(group, every=10)``.

The flat names are also the ``train`` workload's parameters (``POST workloads/train/run``, the
CLI, the panel): its JSON schema is built from the fields here (their ``schema`` metadata plus
their default), so a default exists once. Values are checked against that schema when the job
starts (``train: parameter 'checkpoint_every' ...``), whichever way they were given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .strategies import STRATEGIES

__all__ = [
    "GROUPS",
    "PARAMETERS",
    "CheckpointOptions",
    "CommunicationOptions",
    "DataOptions",
    "EvaluationOptions",
    "MetricsOptions",
    "OptimizationOptions",
    "Parameter",
    "PlacementOptions",
    "RecoveryOptions",
    "from_params",
    "gather",
    "schema_properties",
]

_PY = {"x-python": True}
_POS_INT = {"type": "integer", "minimum": 1}
_NONNEG_INT = {"type": "integer", "minimum": 0}
_SECONDS = {"type": "number", "exclusiveMinimum": 0}


def _setting(default: Any, schema: Mapping[str, Any], param: str | None = None) -> Any:
    """A field with its JSON-schema fragment and, where it differs, its flat keyword."""
    return field(default=default, metadata={"schema": dict(schema), "param": param})


def _as_tuple(obj: Any, name: str) -> None:
    """A list (or any iterable) given for a sequence field is kept as a tuple: frozen means
    immutable. A string or a non-iterable stays as given, to be refused by name at start."""
    value = getattr(obj, name)
    if value is not None and not isinstance(value, (str, bytes, Mapping)) \
            and isinstance(value, Iterable):
        object.__setattr__(obj, name, tuple(value))


@dataclass(frozen=True)
class DataOptions:
    """How the data set is fed to the ranks.

    Attributes:
        epochs: passes over the data set.
        batch_size: the *global* batch, split between the ranks (see
            :attr:`PlacementOptions.shares`).
        max_steps: stop after this many optimizer steps (None: run all the epochs).
        shuffle: reshuffle the samples every epoch.
        seed: seeds the shuffle and torch before a model factory runs, identically on every
            rank.
        collate_fn: turns a list of dataset items into one batch on each rank, like a
            ``DataLoader``'s (e.g. ``transformers.DataCollatorWithPadding(tokenizer)`` for
            items of different lengths). None: tensors are stacked, and dict items become a
            dict of tensors. It travels to the workers, so it must pickle (no lock or open
            connection inside).
        grad_accumulation: micro-batches per optimizer step: each rank's part of the global
            batch is split in this many pieces, run one after the other, and their gradients
            summed before the step (under DDP without an all-reduce but for the last). The
            step's maths stays that of ``batch_size`` samples; a rank holds 1/N of them at a
            time, which is what lets a big batch fit in memory.
    """

    epochs: int = _setting(1, _POS_INT)
    batch_size: int = _setting(64, {**_POS_INT, "description": "the global batch"})
    max_steps: int | None = _setting(None, {"type": ["integer", "null"], "minimum": 1})
    shuffle: bool = _setting(True, {"type": "boolean"})
    seed: int = _setting(0, {"type": "integer"})
    collate_fn: Callable[[list[Any]], Any] | None = _setting(
        None, {**_PY, "description": "list of items -> batch, on each rank"}
    )
    grad_accumulation: int = _setting(1, {**_POS_INT, "description": "micro-batches per step"})


@dataclass(frozen=True)
class PlacementOptions:
    """Which workers train, and how the work is divided between them.

    Attributes:
        workers: only these workers, by address or name (None: every worker of the cluster);
            one the cluster does not have is refused, naming those it has.
        shares: one weight per worker in rank order (the preflight report's) for its part of
            the global batch; None splits by measured throughput. A wrong count is refused.
        torch_threads: torch's intra-op threads on each rank (None: torch's choice).
    """

    workers: Sequence[str] | None = _setting(
        None, {"type": ["array", "null"], "minItems": 1,
               "items": {"type": "string", "minLength": 1}}
    )
    shares: Sequence[float] | None = _setting(
        None, {"type": ["array", "null"], "items": {"type": "number", "minimum": 0}}
    )
    torch_threads: int | None = _setting(None, {"type": ["integer", "null"], "minimum": 1})

    def __post_init__(self) -> None:
        _as_tuple(self, "workers")
        _as_tuple(self, "shares")


@dataclass(frozen=True)
class CommunicationOptions:
    """How the ranks combine their work.

    Attributes:
        strategy: ``auto`` (chosen from the measured link and compute), ``ddp``, ``ddp_fp16``
            (gradients sent in fp16), ``local_sgd`` (parameters averaged every few steps in
            the background) or ``fsdp``.
        local_sgd_every: local SGD's steps between averages (None: from the measurements).
    """

    strategy: str = _setting("auto", {"enum": ["auto", *STRATEGIES]})
    local_sgd_every: int | None = _setting(None, {"type": ["integer", "null"], "minimum": 1})


@dataclass(frozen=True)
class CheckpointOptions:
    """Checkpoints: shipped from rank 0 to this process, kept for recovery, written if asked.

    Attributes:
        dir: write checkpoints (atomically) into this directory; None keeps them in memory
            only. A directory that cannot be written is refused before training starts.
        every: steps between checkpoints (0: only the final one); a lost worker costs at most
            this many steps.
        resume: continue from the checkpoints already in ``dir`` if they are this job's
            (a finished run is moved aside and the job starts fresh; another job's is an
            error: :mod:`parallalx_jupyter.training.resume`); False refuses a ``dir`` that
            holds some.
    """

    dir: str | Path | None = _setting(None, {"type": ["string", "null"], "minLength": 1},
                                      "checkpoint_dir")
    every: int = _setting(50, _NONNEG_INT, "checkpoint_every")
    resume: bool = _setting(True, {"type": "boolean"})


@dataclass(frozen=True)
class RecoveryOptions:
    """Fault tolerance: when a worker is lost, the group re-forms with the rest.

    Attributes:
        min_workers: never train on fewer workers.
        max_restarts: re-form the group at most this many times.
        group_timeout: seconds a collective may wait for a rank: a frozen worker is detected
            and given up after about this long.
        heartbeat_timeout: seconds without a Dask heartbeat after which a worker counts as
            unreachable; while every rank of the job is silent too, 4 s (or this, if less)
            already count as lost (``training/recovery.py``).
        settle_timeout: seconds, on top of ``group_timeout``, for the ranks of a failing or
            cancelled attempt to end and say how, before the attempt is classified.
        probe_timeout: seconds a worker has to answer the environment probe before an attempt.
    """

    min_workers: int = _setting(1, _POS_INT)
    max_restarts: int = _setting(3, _NONNEG_INT)
    group_timeout: float = _setting(60.0, _SECONDS)
    heartbeat_timeout: float = _setting(15.0, _SECONDS)
    settle_timeout: float = _setting(5.0, _SECONDS)
    probe_timeout: float = _setting(60.0, _SECONDS)


@dataclass(frozen=True)
class MetricsOptions:
    """Progress reporting from the ranks to the job.

    Attributes:
        interval: seconds between a rank's metric reports.
        on_progress: called in this process with every progress record.
    """

    interval: float = _setting(0.5, _SECONDS, "metrics_interval")
    on_progress: Callable[[dict[str, Any]], Any] | None = _setting(
        None, {**_PY, "description": "called with every progress record"}
    )


@dataclass(frozen=True)
class OptimizationOptions:
    """What happens around each optimizer step: learning-rate schedule, clipping, precision.

    Attributes:
        lr_scheduler: a factory ``optimizer -> scheduler``, built on every rank after the
            optimizer, e.g. ``functools.partial(torch.optim.lr_scheduler.OneCycleLR,
            max_lr=0.1)``. When the factory has a ``total_steps`` parameter left unset (None),
            it receives how often the scheduler will be stepped (the job's optimizer steps for
            ``lr_scheduler_interval="step"``, its epochs for ``"epoch"``), so a schedule needs
            no arithmetic on the ranks' split. Its state is in every checkpoint and restored on
            resume and recovery. ``ReduceLROnPlateau`` is stepped with the evaluation loss
            (needs ``eval_dataset`` and the ``"epoch"`` interval).
        lr_scheduler_interval: ``"step"`` (after every optimizer step) or ``"epoch"``.
        clip_grad_norm: clip the gradients' total norm to this before each step (after fp16
            unscaling). Under DDP and FSDP the norm is the whole averaged gradient's, the same
            on every rank; under local SGD each rank clips its own local step's gradient.
        autocast: ``"bf16"`` or ``"fp16"``: forward and loss under ``torch.autocast``. fp16
            runs only on CUDA ranks (with a gradient scaler; a CPU rank refuses it by name);
            bf16 on CPU and CUDA, without a scaler. None: full precision.
    """

    lr_scheduler: Callable[..., Any] | None = _setting(
        None, {**_PY, "description": "factory optimizer -> LR scheduler"}
    )
    lr_scheduler_interval: str = _setting("step", {"enum": ["step", "epoch"]})
    clip_grad_norm: float | None = _setting(
        None, {"type": ["number", "null"], "exclusiveMinimum": 0}
    )
    autocast: str | None = _setting(None, {"enum": [None, "bf16", "fp16"]})


@dataclass(frozen=True)
class EvaluationOptions:
    """Evaluation on held-out data at the end of every epoch, into the job's history.

    Every rank evaluates its own contiguous slice of the data set (same model on every rank:
    local SGD averages first) and the figures are summed across ranks, so an epoch's
    evaluation costs 1/N of it on each of N devices; the result is a ``progress`` record with
    an ``eval`` entry (``job.history``, ``on_progress``, the job's events).

    Attributes:
        dataset: the held-out data, in the training set's form (object, ``(X, y)`` tensors or
            a zero-argument factory). None: no evaluation.
        metric: ``metric(outputs, targets) -> float`` per batch, averaged over the samples
            (exact for means such as accuracy; a batch-wise approximation otherwise), shown as
            ``metric``. Always shown: ``loss`` (the training loss on the held-out data), and
            ``accuracy`` when the outputs are class logits and the targets integer labels.
    """

    dataset: Any = _setting(None, {**_PY, "description": "held-out data, evaluated per epoch"},
                            "eval_dataset")
    metric: Callable[[Any, Any], float] | None = _setting(
        None, {**_PY, "description": "metric(outputs, targets) -> float"}, "eval_metric"
    )


#: ``train()``'s keyword for each group, in the order the schema lists them.
GROUPS: dict[str, type] = {
    "data": DataOptions,
    "placement": PlacementOptions,
    "communication": CommunicationOptions,
    "checkpoint": CheckpointOptions,
    "recovery": RecoveryOptions,
    "metrics": MetricsOptions,
    "optimization": OptimizationOptions,
    "evaluation": EvaluationOptions,
}


@dataclass(frozen=True)
class Parameter:
    """One setting: its flat keyword / workload parameter, its group and field, its schema."""

    name: str
    group: str
    field: str
    default: Any
    schema: dict[str, Any]

    @property
    def spelled(self) -> str:
        """``CheckpointOptions.dir``: where the setting lives in the groups."""
        return f"{GROUPS[self.group].__name__}.{self.field}"

    def json_schema(self) -> dict[str, Any]:
        """The property of the workload's parameter schema (Python objects: no default)."""
        if self.schema.get("x-python"):
            return dict(self.schema)
        return {**self.schema, "default": self.default}


def _parameters() -> tuple[Parameter, ...]:
    out = []
    for group, cls in GROUPS.items():
        for f in dataclasses.fields(cls):
            out.append(Parameter(f.metadata["param"] or f.name, group, f.name, f.default,
                                 f.metadata["schema"]))
    names = [p.name for p in out]
    assert len(set(names)) == len(names), names
    return tuple(out)


#: Every setting of every group, by flat name.
PARAMETERS: dict[str, Parameter] = {p.name: p for p in _parameters()}


def schema_properties() -> dict[str, Any]:
    """The workload's JSON-schema properties for every setting (name -> schema with default)."""
    return {p.name: p.json_schema() for p in PARAMETERS.values()}


def gather(flat: Mapping[str, Any], groups: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting by flat name, from the flat keywords given (``flat``: only those) and the
    group objects given (``groups``: keyword -> object or None).

    A group must be an instance of its class; a flat keyword given together with its group is
    refused. All such mistakes come in one ``TypeError``.
    """
    problems = []
    for key, obj in groups.items():
        cls = GROUPS[key]
        if obj is not None and not isinstance(obj, cls):
            problems.append(f"{key}= takes a {cls.__name__}, not {type(obj).__name__}")
    both = [p for name, p in PARAMETERS.items()
            if name in flat and groups.get(p.group) is not None]
    for p in both:
        problems.append(f"{p.name}= and {p.group}= both set {p.spelled}")
    if problems:
        hint = ("; give each setting once: in its group (dataclasses.replace(group, field=...) "
                "changes one) or as a keyword" if both else "")
        raise TypeError(f"train(): {'; '.join(problems)}{hint}")
    out = {}
    for name, p in PARAMETERS.items():
        obj = groups.get(p.group)
        out[name] = (getattr(obj, p.field) if obj is not None
                     else flat.get(name, p.default))
    return out


def from_params(cls: type, params: Mapping[str, Any]) -> Any:
    """The group object of class ``cls`` holding the settings in ``params`` (by flat name;
    one not there, such as an optional Python object, takes its default)."""
    key = next(k for k, c in GROUPS.items() if c is cls)
    return cls(**{p.field: params.get(p.name, p.default)
                  for p in PARAMETERS.values() if p.group == key})
