"""Training as a workload: ``train(...)``, the ``TrainingJob`` it returns, ``TrainWorkload``.

``parallalx_jupyter.train(...)`` is this module's :func:`train`, which is ``start("train", ...)``:
training gets the same parameter schema, job list, progress events and cancel as every other
workload. The job runs in a background thread (the Dask client is used synchronously there), so
the notebook stays responsive: ``job.progress`` / ``job.history`` update live, ``job.cancel()``
stops it, ``job.result()`` (or ``await job``) gives back the trained model as a CPU module in
this process. Works with any ``distributed`` cluster: pass a ``Client``, a scheduler address
(plus ``security=`` for TLS), or nothing to use the default client or, without one, this
device's own parallalx cluster as the main device.

The engine itself (driver, ranks, strategies, checkpoints, preflight) lives in
:mod:`parallalx_jupyter.training`, which knows nothing of workloads.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..jobs.client import NoClientError
from ..jobs.handle import Job
from ..jobs.hub import ProgressHub, Record
from ..training.batches import check_sample
from ..training.checkpoint import CheckpointStore, unpack
from ..training.driver import Driver
from ..training.errors import TrainingError
from ..training.loop import scheduler_problem
from ..training.options import (
    PARAMETERS,
    CheckpointOptions,
    CommunicationOptions,
    DataOptions,
    EvaluationOptions,
    MetricsOptions,
    OptimizationOptions,
    PlacementOptions,
    RecoveryOptions,
    from_params,
    gather,
    schema_properties,
)
from ..training.preflight import PreflightReport
from ..training.resume import (
    dataset_length,
    fingerprint,
    model_params,
    optimizer_name,
    plan_resume,
)
from ..training.spec import (
    JobSpec,
    build_model,
    cannot_ship,
    optimizer_factory,
    pack_user_objects,
    tensor_columns,
)
from .base import JobContext, Workload, WorkloadError, validate_params
from .runner import start

__all__ = ["TrainWorkload", "TrainingJob", "train"]

logger = logging.getLogger(__name__)

_PY = {"x-python": True}


class TrainingJob(Job):
    """Handle on a running training job (thread-safe to read from the notebook).

    Besides :class:`~parallalx_jupyter.jobs.handle.Job`'s ``state``, ``progress`` (global step,
    loss, samples/s, communication share, stragglers, ETA, per-rank figures; see
    :mod:`parallalx_jupyter.training.metrics`), ``history`` and ``events``:

    * ``preflight``: the latest :class:`PreflightReport` (one per attempt);
    * ``restarts``: how often the group was re-formed after losing a worker;
    * ``checkpoint_path``: the newest checkpoint written for this job;
    * ``resume_notes``: how it started from its ``checkpoint_dir``: "resuming from step N of
      <file>" (and how far that was checked to be the same job), or "... holds a finished run
      ...: starting fresh", and each hyper-parameter asked that differs from the checkpoint's;
    * ``timeline``: seconds from the ``train()`` call to each phase of the latest attempt
      (probe, ship, rendezvous, rank process, process group, build, preflight, first step;
      at the end also the last step, the final state packed on rank 0 and received here);
    * ``evaluations``: with ``eval_dataset``, each epoch's figures (``epoch``,
      ``global_step``, ``loss``, ``accuracy``, ``metric``, ``samples``), in the order of the
      ``history`` records that carry them under ``eval``.

    ``result()`` is the trained model as a CPU module in this process.
    """

    def __init__(
        self, job_id: str, hub: ProgressHub, store: CheckpointStore, name: str = "training"
    ) -> None:
        self.preflight: PreflightReport | None = None
        self.restarts = 0
        self.resume_notes: list[str] = []
        self._store = store
        super().__init__(job_id, "train", name, hub)

    def _on_record(self, rec: Record) -> None:
        kind = rec.get("kind")
        if kind == "preflight":
            self.preflight = PreflightReport.from_dict(rec["report"])
        elif kind == "restart":
            self.restarts += 1
        elif kind == "speed" and self.preflight is not None:
            self.preflight.measured_steps_per_s = float(rec.get("measured_steps_per_s") or 0.0)
        elif kind == "resume":
            notes = [rec.get("text"), rec.get("fingerprint"), *(rec.get("hyperparameters") or [])]
            self.resume_notes += [n for n in notes if n and n not in self.resume_notes]

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        """Each epoch's evaluation so far (see the class docstring)."""
        with self._lock:
            return [dict(h["eval"]) for h in self.history if "eval" in h]

    @property
    def checkpoint_path(self) -> Path | None:
        """Newest checkpoint file written for this job (None without ``checkpoint_dir``)."""
        return self._store.last_path


class TrainWorkload(Workload):
    name = "train"
    description = (
        "Data-parallel PyTorch training over every worker (DDP, DDP+fp16, local SGD, FSDP), "
        "shards sized to each device's speed, checkpoints and recovery"
    )
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "required": ["model", "dataset", "loss_fn", "optimizer"],
        "properties": {
            "model": {**_PY, "description": "torch.nn.Module or a factory returning one"},
            "dataset": {**_PY, "description": "a map-style data set, (x, y) tensors or factory"},
            "loss_fn": {**_PY, "description": "loss(output, target), mean over the batch; "
                        "None: the model's output carries it (outputs.loss)"},
            "optimizer": {**_PY, "description": "factory taking the parameters, or an optimizer"},
            # every setting of the option groups, by its flat name, with its default
            **schema_properties(),
        },
    }
    job_class = TrainingJob

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        out = validate_params(self.name, self.parameters, params)
        if out["dataset"] is None:
            raise WorkloadError("train: dataset is None: pass a map-style Dataset, (x, y) "
                                "tensors or a factory returning one")
        for what in ("dataset", "eval_dataset"):
            try:
                out[what] = tensor_columns(out.get(what), what)
            except (TypeError, ValueError) as err:
                raise WorkloadError(f"train: {err}") from None
        problem = scheduler_problem(out.get("lr_scheduler"), out["lr_scheduler_interval"],
                                    out.get("eval_dataset") is not None)
        for name in ("collate_fn", "eval_metric"):
            if out.get(name) is not None and not callable(out[name]):
                problem = f"{name} must be callable, not {type(out[name]).__name__}"
        if problem:
            raise WorkloadError(f"train: {problem}")
        # one batch of the first items, here and once, before any worker starts
        for what in ("dataset", "eval_dataset"):
            if out.get(what) is None:
                continue
            try:
                check_sample(out["model"], out[what], out["loss_fn"], out.get("collate_fn"),
                             what=what)
            except (TypeError, ValueError) as err:
                raise WorkloadError(f"train: {err}") from None
        return out

    def job_name(self, params: dict[str, Any]) -> str:
        """What the job trains, so a list of jobs tells them apart without a ``name=``:
        ``train Net on 1,797 samples`` (a factory: its name; a data set made by a factory
        has no size here)."""
        model = params["model"]
        label = type(model).__name__ if _is_module(model) else getattr(model, "__name__", "")
        size = dataset_length(params["dataset"])
        on = f" on {size:,} sample{'s' if size != 1 else ''}" if size is not None else ""
        return f"train {label or 'model'}{on}"

    def make_job(self, job_id: str, name: str, params: dict[str, Any]) -> Job:
        directory = params["checkpoint_dir"]
        store = CheckpointStore(directory)
        try:
            store.check_writable()
        except OSError as err:  # a file, no permission, a read-only disk: before any work
            raise WorkloadError(
                f"train: checkpoint_dir {directory!r} cannot hold checkpoints: "
                f"{err.strerror or err}"
            ) from None
        if store.files():
            if not params["resume"]:
                raise WorkloadError(
                    f"train: {directory} already holds checkpoints; pass resume=True to "
                    "continue from them or choose another checkpoint_dir"
                )
            store.latest()  # load the newest checkpoint on disk
        job = TrainingJob(job_id, ProgressHub(), store, name)
        if params.get("on_progress") is not None:
            job.subscribe(params["on_progress"], {"progress"})
        return job

    def summarize(self, result: Any) -> dict[str, Any]:
        return {"model": type(result).__name__,
                "parameters": sum(p.numel() for p in result.parameters())}

    def run(self, ctx: JobContext, params: dict[str, Any]) -> Any:
        job = ctx.job
        assert isinstance(job, TrainingJob)
        model = params["model"]
        try:
            ship_model = copy.deepcopy(model) if _is_module(model) else model
        except Exception as err:  # a lock or a socket inside the model
            raise cannot_ship("model", err) from None
        data = from_params(DataOptions, params)
        placement = from_params(PlacementOptions, params)
        communication = from_params(CommunicationOptions, params)
        checkpoint = from_params(CheckpointOptions, params)
        optimization = from_params(OptimizationOptions, params)
        _plan_resume(ctx, job._store, params, data)
        spec = JobSpec(
            job_id=job.id,
            user_objects=pack_user_objects(
                ship_model, params["dataset"], params["loss_fn"],
                optimizer_factory(params["optimizer"]),
                collate_fn=params.get("collate_fn"),
                lr_scheduler=params.get("lr_scheduler"),
                eval_dataset=params.get("eval_dataset"),
                eval_metric=params.get("eval_metric"),
            ),
            epochs=data.epochs,
            global_batch=data.batch_size,
            strategy=communication.strategy,
            seed=data.seed,
            shuffle=data.shuffle,
            checkpoint_every=checkpoint.every,
            max_steps=data.max_steps,
            metrics_interval=float(from_params(MetricsOptions, params).interval),
            torch_threads=placement.torch_threads,
            shares=list(placement.shares) if placement.shares is not None else None,
            local_sgd_every=communication.local_sgd_every,
            grad_accumulation=data.grad_accumulation,
            lr_scheduler_interval=optimization.lr_scheduler_interval,
            clip_grad_norm=optimization.clip_grad_norm,
            autocast=optimization.autocast,
            final_optimizer=checkpoint.dir is not None,
            same_job=_same_job_key(params),
        )
        driver = Driver(
            ctx.client,
            spec,
            store=job._store,
            hub=job.hub,
            cancel=job._cancel,
            recovery=from_params(RecoveryOptions, params),
            workers=placement.workers,
            device_names=ctx.device_names,  # a lost device is named as its owner calls it
        )
        final = driver.run()
        return _load_result(model, ship_model, final)


def _same_job_key(params: dict[str, Any]) -> str:
    """The model's parameter shapes, the optimizer, loss and data set kinds and sizes, and the
    settings that change a step's cost: equal for a re-run of the same cell."""
    import hashlib
    import json

    model = params["model"]
    parts = [
        model_params(model) if _is_module(model) else getattr(model, "__qualname__", repr(model)),
        optimizer_name(params["optimizer"]),
        type(params["loss_fn"]).__qualname__,
        dataset_length(params["dataset"]),
        [params.get(k) for k in ("batch_size", "epochs", "max_steps", "torch_threads",
                                 "grad_accumulation", "autocast")],
    ]
    text = json.dumps(parts, default=str, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _plan_resume(ctx: JobContext, store: CheckpointStore, params: dict[str, Any],
                 data: DataOptions) -> None:
    """Resume, start fresh or refuse, from the checkpoint_dir (training/resume.py), and say
    which: a record in ``job.events``, a progress message for the job list, a log line."""
    model = params["model"]
    now = fingerprint(
        params=model_params(model) if _is_module(model) else None,
        optimizer=optimizer_name(params["optimizer"]),
        dataset_len=dataset_length(params["dataset"]),
        global_batch=data.batch_size,
    )
    plan = plan_resume(store, now, epochs=data.epochs, max_steps=data.max_steps)
    if plan.action == "none":
        return
    if plan.action == "fresh":
        logger.warning("training job %s: %s", ctx.job.id, plan.text)
    else:
        logger.info("training job %s: %s (%s)", ctx.job.id, plan.text, plan.checked)
    ctx.record("resume", action=plan.action, step=plan.step,
               path=str(plan.path) if plan.path else None,
               set_aside=str(plan.set_aside) if plan.set_aside else None,
               text=plan.text, fingerprint=plan.checked or None)
    ctx.progress(global_step=plan.step, message=plan.text)


class _Unset:
    """The default of ``train()``'s flat keywords: "not given", so the option groups' own
    defaults apply and a keyword given together with its group can be told apart."""

    def __repr__(self) -> str:
        return "<default>"


_UNSET: Any = _Unset()


def train(
    model: Any,
    dataset: Any,
    loss_fn: Any,
    optimizer: Any,
    *,
    data: DataOptions | None = None,
    placement: PlacementOptions | None = None,
    communication: CommunicationOptions | None = None,
    checkpoint: CheckpointOptions | None = None,
    recovery: RecoveryOptions | None = None,
    metrics: MetricsOptions | None = None,
    optimization: OptimizationOptions | None = None,
    evaluation: EvaluationOptions | None = None,
    client: Any = None,
    security: Any = None,
    name: str | None = None,
    report: Any = True,
    # every setting of the groups as a flat keyword too (defaults: the groups' fields)
    epochs: int = _UNSET,
    batch_size: int = _UNSET,
    strategy: str = _UNSET,
    checkpoint_dir: str | Path | None = _UNSET,
    checkpoint_every: int = _UNSET,
    min_workers: int = _UNSET,
    max_restarts: int = _UNSET,
    group_timeout: float = _UNSET,
    on_progress: Callable[[Record], Any] | None = _UNSET,
    workers: Sequence[str] | None = _UNSET,
    seed: int = _UNSET,
    shuffle: bool = _UNSET,
    max_steps: int | None = _UNSET,
    resume: bool = _UNSET,
    shares: Sequence[float] | None = _UNSET,
    local_sgd_every: int | None = _UNSET,
    torch_threads: int | None = _UNSET,
    metrics_interval: float = _UNSET,
    settle_timeout: float = _UNSET,
    heartbeat_timeout: float = _UNSET,
    probe_timeout: float = _UNSET,
    collate_fn: Callable[[list[Any]], Any] | None = _UNSET,
    grad_accumulation: int = _UNSET,
    lr_scheduler: Callable[..., Any] | None = _UNSET,
    lr_scheduler_interval: str = _UNSET,
    clip_grad_norm: float | None = _UNSET,
    autocast: str | None = _UNSET,
    eval_dataset: Any = _UNSET,
    eval_metric: Callable[[Any, Any], float] | None = _UNSET,
) -> TrainingJob:
    """Train ``model`` data-parallel on every worker of a Dask cluster; returns at once.

    ``model``/``dataset``/``loss_fn`` are objects or zero-argument factories; ``optimizer`` is
    a factory taking the parameters (e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``) or an
    optimizer instance whose class and defaults are reused. ``loss_fn(output, target)`` must
    return the mean over the batch.

    Data set items are tuples ``(inputs..., target)`` (the model is called ``model(*inputs)``)
    or dicts, as tokenised Hugging Face data sets give: those are collated into a dict of
    tensors and the model is called ``model(**batch)``, without the ``labels`` key when a
    ``loss_fn`` takes it as the target. ``loss_fn=None``: the model gets the whole batch and
    its output carries the loss (``outputs.loss``, ``outputs["loss"]`` or a scalar tensor, as
    Hugging Face models do when the batch holds ``labels``). The first items are collated and
    checked against the model's forward here, before any worker starts: a mismatch (items of
    unequal lengths, dict items for a forward without keyword arguments, ...) is one error
    saying what was received and the way out.

    The settings come in typed groups (frozen dataclasses of
    :mod:`parallalx_jupyter.training.options`, each field documented there, with its default):

    * ``data=DataOptions(epochs=1, batch_size=64, max_steps=None, shuffle=True, seed=0)``:
      ``batch_size`` is the *global* batch, split between ranks in proportion to measured
      throughput;
    * ``placement=PlacementOptions(workers=None, shares=None, torch_threads=None)``:
      ``shares`` is one weight per worker, in rank order (the preflight report's), instead;
    * ``communication=CommunicationOptions(strategy="auto", local_sgd_every=None)``:
      ``auto`` or one of ``ddp``, ``ddp_fp16``, ``local_sgd``, ``fsdp``;
    * ``checkpoint=CheckpointOptions(dir=None, every=50, resume=True)``: checkpoints are
      shipped to this process every ``every`` steps and at the end, kept in memory for
      recovery and written to ``dir`` if given (from which the job resumes when ``resume``);
    * ``recovery=RecoveryOptions(min_workers=1, max_restarts=3, group_timeout=60.0, ...)``:
      a lost worker makes the job re-form with the rest (at most ``max_restarts`` times, never
      below ``min_workers``); a frozen or cut-off worker is detected within seconds from its
      heartbeats and the silent ranks, at the latest after ``group_timeout`` seconds;
    * ``metrics=MetricsOptions(interval=0.5, on_progress=None)``: ``on_progress`` receives
      progress records;
    * ``data=`` also holds ``collate_fn=None`` (items -> batch on each rank, e.g.
      ``DataCollatorWithPadding``) and ``grad_accumulation=1`` (each rank's part of a step in
      that many micro-batches, all-reduced once: the same maths in less memory);
    * ``optimization=OptimizationOptions(lr_scheduler=None, lr_scheduler_interval="step",
      clip_grad_norm=None, autocast=None)``: ``lr_scheduler`` is a factory ``optimizer ->
      scheduler`` (``functools.partial(OneCycleLR, max_lr=0.1)``: an unset ``total_steps``
      is filled in with the job's steps, or epochs for the ``"epoch"`` interval), checkpointed
      and restored on resume and recovery; ``clip_grad_norm`` clips the total gradient norm
      before each step; ``autocast`` is ``"bf16"`` (CPU and CUDA) or ``"fp16"`` (CUDA, with a
      gradient scaler);
    * ``evaluation=EvaluationOptions(dataset=None, metric=None)`` (flat: ``eval_dataset=``,
      ``eval_metric=``): evaluated at the end of every epoch, sharded over the ranks and
      summed, into ``job.history`` (a progress record with ``eval``: ``loss``, ``accuracy``
      for class logits, ``metric(outputs, targets)``) and ``job.evaluations``.

    Every setting is also a flat keyword, as before the groups: ``epochs=``, ``batch_size=``,
    ``checkpoint_dir=`` (``CheckpointOptions.dir``), ``checkpoint_every=``
    (``CheckpointOptions.every``), ``metrics_interval=`` (``MetricsOptions.interval``), and
    each other field under its own name. A group fixes all of its settings, so a flat keyword
    given with its group is a ``TypeError`` (``dataclasses.replace`` changes one field).

    Training is the ``train`` workload (:class:`TrainWorkload`, above): the job is
    listed by this device's server (``name`` shows there; ``report=False`` keeps it local), so
    the panel, the CLI and other kernels see its progress and can cancel it. ``client`` is a
    ``distributed.Client``, a scheduler address (with ``security=`` for TLS) or None.
    """
    given = {k: v for k, v in locals().items() if k in PARAMETERS and v is not _UNSET}
    groups = {"data": data, "placement": placement, "communication": communication,
              "checkpoint": checkpoint, "recovery": recovery, "metrics": metrics,
              "optimization": optimization, "evaluation": evaluation}
    settings = gather(given, groups)
    params = {
        "model": model, "dataset": dataset, "loss_fn": loss_fn, "optimizer": optimizer,
        **settings,
        "checkpoint_dir": _text(settings["checkpoint_dir"]),
        "workers": _listed(settings["workers"]),
        "shares": _listed(settings["shares"]),
    }
    try:
        job = start(TrainWorkload(), params, client=client, security=security, name=name,
                    report=report)
    except NoClientError as err:
        raise TrainingError(str(err)) from None
    assert isinstance(job, TrainingJob)
    return job


def _text(path: Any) -> Any:
    return None if path is None else str(path)


def _listed(seq: Any) -> Any:
    """Sequences as JSON arrays (lists) for the schema; a string or a non-iterable as given,
    to be refused there with the parameter's name."""
    if seq is None or isinstance(seq, (str, bytes)):
        return seq
    try:
        return list(seq)
    except TypeError:
        return seq


def _is_module(obj: Any) -> bool:
    import torch

    return isinstance(obj, torch.nn.Module)


def _load_result(model: Any, shipped: Any, final: bytes) -> Any:
    """A CPU model in this process with the final weights (the caller's object is untouched)."""
    state = unpack(final)
    local = copy.deepcopy(shipped) if _is_module(model) else build_model(model)
    local = local.to("cpu")
    local.load_state_dict(state["model"])
    return local
