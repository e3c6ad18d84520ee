"""Training as a workload: ``parallalx_jupyter.train(...)`` is ``start("train", ...)``.

The engine itself lives in :mod:`parallalx_jupyter.training`; this adapter gives it the same
parameter schema, job list, progress events and cancel as every other workload.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from ..jobs.handle import Job
from ..jobs.hub import ProgressHub
from ..training.api import TrainingJob
from ..training.checkpoint import CheckpointStore, unpack
from ..training.driver import Driver
from ..training.spec import (
    JobSpec,
    build_model,
    cannot_ship,
    optimizer_factory,
    pack_user_objects,
)
from ..training.strategies import STRATEGIES
from .base import JobContext, Workload, WorkloadError, validate_params

_PY = {"x-python": True}
_POS_INT = {"type": "integer", "minimum": 1}
_NONNEG_INT = {"type": "integer", "minimum": 0}
_SECONDS = {"type": "number", "exclusiveMinimum": 0}


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
