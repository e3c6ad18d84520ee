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
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..jobs.client import NoClientError
from ..jobs.handle import Job
from ..jobs.hub import ProgressHub, Record
from ..training.checkpoint import CheckpointStore, unpack
from ..training.driver import Driver
from ..training.errors import TrainingError
from ..training.preflight import PreflightReport
from ..training.spec import (
    JobSpec,
    build_model,
    cannot_ship,
    optimizer_factory,
    pack_user_objects,
)
from ..training.strategies import STRATEGIES
from .base import JobContext, Workload, WorkloadError, validate_params
from .runner import start

__all__ = ["TrainWorkload", "TrainingJob", "train"]

_PY = {"x-python": True}
_POS_INT = {"type": "integer", "minimum": 1}
_NONNEG_INT = {"type": "integer", "minimum": 0}
_SECONDS = {"type": "number", "exclusiveMinimum": 0}


class TrainingJob(Job):
    """Handle on a running training job (thread-safe to read from the notebook).

    Besides :class:`~parallalx_jupyter.jobs.handle.Job`'s ``state``, ``progress`` (global step,
    loss, samples/s, communication share, stragglers, ETA, per-rank figures; see
    :mod:`parallalx_jupyter.training.metrics`), ``history`` and ``events``:

    * ``preflight``: the latest :class:`PreflightReport` (one per attempt);
    * ``restarts``: how often the group was re-formed after losing a worker;
    * ``checkpoint_path``: the newest checkpoint written for this job;
    * ``timeline``: seconds from the ``train()`` call to each phase of the latest attempt
      (probe, ship, rendezvous, rank process, process group, build, preflight, first step;
      at the end also the last step, the final state packed on rank 0 and received here).

    ``result()`` is the trained model as a CPU module in this process.
    """

    def __init__(
        self, job_id: str, hub: ProgressHub, store: CheckpointStore, name: str = "training"
    ) -> None:
        self.preflight: PreflightReport | None = None
        self.restarts = 0
        self.timeline: dict[str, float] = {}
        self.created_at = time.time()
        self._store = store
        super().__init__(job_id, "train", name, hub)

    def _on_record(self, rec: Record) -> None:
        kind = rec.get("kind")
        if kind == "preflight":
            self.preflight = PreflightReport.from_dict(rec["report"])
        elif kind == "restart":
            self.restarts += 1
        elif kind == "timeline":
            marks = rec.get("marks") or {}
            self.timeline = {k: round(v - self.created_at, 4)
                             for k, v in sorted(marks.items(), key=lambda kv: kv[1])}

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
            "loss_fn": {**_PY, "description": "loss(output, target), mean over the batch"},
            "optimizer": {**_PY, "description": "factory taking the parameters, or an optimizer"},
            "on_progress": {**_PY, "description": "called with every progress record"},
            "epochs": {**_POS_INT, "default": 1},
            "batch_size": {**_POS_INT, "default": 64, "description": "the global batch"},
            "strategy": {"enum": ["auto", *STRATEGIES], "default": "auto"},
            "checkpoint_dir": {"type": ["string", "null"], "default": None},
            "checkpoint_every": {**_NONNEG_INT, "default": 50},
            "resume": {"type": "boolean", "default": True},
            "min_workers": {**_POS_INT, "default": 1},
            "max_restarts": {**_NONNEG_INT, "default": 3},
            "group_timeout": {**_SECONDS, "default": 60.0},
            "workers": {"type": ["array", "null"], "items": {"type": "string"}, "default": None},
            "seed": {"type": "integer", "default": 0},
            "shuffle": {"type": "boolean", "default": True},
            "max_steps": {"type": ["integer", "null"], "minimum": 1, "default": None},
            "shares": {"type": ["array", "null"], "items": {"type": "number", "minimum": 0},
                       "default": None},
            "local_sgd_every": {"type": ["integer", "null"], "minimum": 1, "default": None},
            "torch_threads": {"type": ["integer", "null"], "minimum": 1, "default": None},
            "metrics_interval": {**_SECONDS, "default": 0.5},
            "settle_timeout": {**_SECONDS, "default": 5.0},
            "heartbeat_timeout": {**_SECONDS, "default": 15.0},
            "probe_timeout": {**_SECONDS, "default": 60.0},
        },
    }
    job_class = TrainingJob

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        out = validate_params(self.name, self.parameters, params)
        if not math.isfinite(out["group_timeout"]):
            raise WorkloadError("train: parameter 'group_timeout' must be a finite number")
        return out

    def job_name(self, params: dict[str, Any]) -> str:
        model = params["model"]
        label = type(model).__name__ if _is_module(model) else getattr(model, "__name__", "")
        return f"train {label}".strip()

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
        spec = JobSpec(
            job_id=job.id,
            user_objects=pack_user_objects(
                ship_model, params["dataset"], params["loss_fn"],
                optimizer_factory(params["optimizer"]),
            ),
            epochs=params["epochs"],
            global_batch=params["batch_size"],
            strategy=params["strategy"],
            seed=params["seed"],
            shuffle=params["shuffle"],
            checkpoint_every=params["checkpoint_every"],
            max_steps=params["max_steps"],
            metrics_interval=float(params["metrics_interval"]),
            torch_threads=params["torch_threads"],
            shares=list(params["shares"]) if params["shares"] is not None else None,
            local_sgd_every=params["local_sgd_every"],
            final_optimizer=params["checkpoint_dir"] is not None,
        )
        driver = Driver(
            ctx.client,
            spec,
            store=job._store,
            hub=job.hub,
            cancel=job._cancel,
            min_workers=params["min_workers"],
            max_restarts=params["max_restarts"],
            group_timeout=float(params["group_timeout"]),
            settle_timeout=float(params["settle_timeout"]),
            heartbeat_timeout=float(params["heartbeat_timeout"]),
            probe_timeout=float(params["probe_timeout"]),
            workers=params["workers"],
        )
        final = driver.run()
        return _load_result(model, ship_model, final)


def train(
    model: Any,
    dataset: Any,
    loss_fn: Any,
    optimizer: Any,
    *,
    epochs: int = 1,
    batch_size: int = 64,
    strategy: str = "auto",
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 50,
    client: Any = None,
    min_workers: int = 1,
    max_restarts: int = 3,
    group_timeout: float = 60.0,
    on_progress: Callable[[Record], Any] | None = None,
    security: Any = None,
    workers: Sequence[str] | None = None,
    seed: int = 0,
    shuffle: bool = True,
    max_steps: int | None = None,
    resume: bool = True,
    shares: Sequence[float] | None = None,
    local_sgd_every: int | None = None,
    torch_threads: int | None = None,
    metrics_interval: float = 0.5,
    settle_timeout: float = 5.0,
    heartbeat_timeout: float = 15.0,
    probe_timeout: float = 60.0,
    name: str | None = None,
    report: Any = True,
) -> TrainingJob:
    """Train ``model`` data-parallel on every worker of a Dask cluster; returns at once.

    ``model``/``dataset``/``loss_fn`` are objects or zero-argument factories; ``optimizer`` is
    a factory taking the parameters (e.g. ``functools.partial(torch.optim.SGD, lr=0.1)``) or an
    optimizer instance whose class and defaults are reused. ``loss_fn(output, target)`` must
    return the mean over the batch. ``batch_size`` is the *global* batch, split between ranks
    in proportion to measured throughput (or ``shares``: one weight per worker, in rank order,
    i.e. the preflight report's; a wrong count is refused). ``strategy`` is ``auto`` or one of
    ``ddp``, ``ddp_fp16``, ``local_sgd``, ``fsdp``.

    Checkpoints are shipped to this process every ``checkpoint_every`` steps and at the end,
    kept in memory for recovery and written to ``checkpoint_dir`` if given (from which the job
    resumes when ``resume`` is true). A lost worker makes the job re-form with the rest (at most
    ``max_restarts`` times, never below ``min_workers``). A frozen worker is detected after
    ``group_timeout`` seconds. ``on_progress`` receives progress records.

    Training is the ``train`` workload (:class:`TrainWorkload`, below): the job is
    listed by this device's server (``name`` shows there; ``report=False`` keeps it local), so
    the panel, the CLI and other kernels see its progress and can cancel it.
    """
    params = {
        "model": model, "dataset": dataset, "loss_fn": loss_fn, "optimizer": optimizer,
        "epochs": epochs, "batch_size": batch_size, "strategy": strategy,
        "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
        "checkpoint_every": checkpoint_every, "min_workers": min_workers,
        "max_restarts": max_restarts, "group_timeout": group_timeout,
        "on_progress": on_progress, "workers": None if workers is None else list(workers),
        "seed": seed, "shuffle": shuffle, "max_steps": max_steps, "resume": resume,
        "shares": None if shares is None else list(shares),
        "local_sgd_every": local_sgd_every, "torch_threads": torch_threads,
        "metrics_interval": metrics_interval, "settle_timeout": settle_timeout,
        "heartbeat_timeout": heartbeat_timeout, "probe_timeout": probe_timeout,
    }
    try:
        job = start(TrainWorkload(), params, client=client, security=security, name=name,
                    report=report)
    except NoClientError as err:
        raise TrainingError(str(err)) from None
    assert isinstance(job, TrainingJob)
    return job


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
