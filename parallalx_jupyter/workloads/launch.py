"""``px.launch(fn, *args, **kwargs)``: the user's own training function on every worker.

Like ``accelerate.notebook_launcher``, Ray Train's ``train_loop_per_worker`` or ``torchrun``:
``fn`` runs once per worker of the cluster ``train()`` uses, in a rank process with the torch
process group formed and torchrun's environment set (``training/launch_rank.py``), so code
written for torchrun runs unchanged. It is a workload like any other (``launch``): same job
list, progress events, cancel and recovery as ``train()``, because it runs on ``train()``'s
driver (``training/launch_driver.py``).

``job.result()`` is rank 0's return value, which travels back as data (numbers, strings,
lists, dicts, tensors; a module as its ``state_dict``), never as a pickle. Inside ``fn``:
``px.report(step=..., loss=..., **metrics)``, ``px.checkpoint(state)`` and ``px.restore()``.
When a device is lost the group re-forms with the others and ``fn`` starts again on every
rank, where ``px.restore()`` gives the newest checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..jobs.handle import Job, JobCancelledError
from ..jobs.hub import ProgressHub, Record
from ..training.checkpoint import CheckpointStore
from ..training.errors import TrainingCancelledError
from ..training.launch_rank import pack_launch
from ..training.options import PARAMETERS, PlacementOptions, RecoveryOptions, from_params
from .base import JobContext, Workload, WorkloadError

__all__ = ["LAUNCH_OPTIONS", "LaunchJob", "LaunchWorkload", "launch"]

logger = logging.getLogger(__name__)

_PY = {"x-python": True}

#: ``train()``'s settings that ``launch`` takes too (same names, schemas and defaults)
_SHARED = ("workers", "torch_threads", "checkpoint_dir", "resume", "min_workers",
           "max_restarts", "group_timeout", "heartbeat_timeout", "settle_timeout",
           "probe_timeout")

#: ``launch``'s own keywords; every other keyword goes to ``fn``
LAUNCH_OPTIONS = frozenset({"client", "security", "name", "report", "requirements", *_SHARED})

#: ``JobSpec.global_batch`` for a launched job: no batch to split, never fewer than the ranks
_NO_BATCH = 1 << 30


class LaunchJob(Job):
    """Handle on a launched job: ``Job``'s ``state``, ``progress``, ``history``, ``events``,
    ``output``, ``timeline`` (seconds from the call to the probe, the rank processes, the
    process group, the function's start and end), ``cancel()`` and ``result()`` (rank 0's
    return value), plus ``restarts`` (how often the group re-formed after losing a device)
    and ``checkpoint_path`` (newest file written)."""

    def __init__(self, job_id: str, hub: ProgressHub, store: CheckpointStore,
                 name: str = "launch") -> None:
        self.restarts = 0
        self._store = store
        super().__init__(job_id, "launch", name, hub)

    def _on_record(self, rec: Record) -> None:
        if rec.get("kind") == "restart":
            self.restarts += 1

    @property
    def checkpoint_path(self) -> Path | None:
        """Newest checkpoint file written for this job (None without ``checkpoint_dir``)."""
        return self._store.last_path


class LaunchWorkload(Workload):
    name = "launch"
    description = (
        "Your own training function (or script) on every worker, torchrun-style: process "
        "group formed, RANK/WORLD_SIZE/... set, checkpoints and recovery"
    )
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "required": ["fn"],
        "properties": {
            "fn": {**_PY, "description": "the function each rank runs"},
            "args": {**_PY, "x-json": "array",
                     "description": "positional arguments of fn (a tuple)"},
            "kwargs": {**_PY, "x-json": "object",
                       "description": "keyword arguments of fn (a dict)"},
            "requirements": {
                "type": ["array", "null"], "maxItems": 100,
                "items": {"type": "string", "maxLength": 300},
                "description": "PEP 508 requirements each device's chosen kernel must satisfy; "
                               "missing ones are installed there before the ranks start",
            },
            **{name: PARAMETERS[name].json_schema() for name in _SHARED},
        },
    }
    job_class = LaunchJob

    def job_name(self, params: dict[str, Any]) -> str:
        fn = params["fn"]
        label = getattr(fn, "label", None) or getattr(fn, "__name__", type(fn).__name__)
        return f"launch {label}"

    def make_job(self, job_id: str, name: str, params: dict[str, Any]) -> Job:
        from ..environments.errors import RequirementError
        from ..environments.requirements import parse_requirements

        try:  # one clear line now, not one per device later
            params["requirements"] = [
                str(r) for r in parse_requirements(params.get("requirements") or [])]
        except RequirementError as err:
            raise WorkloadError(f"launch: {err.message}") from None
        store = CheckpointStore(params["checkpoint_dir"])
        try:
            store.check_writable()
        except OSError as err:
            raise WorkloadError(
                f"launch: checkpoint_dir {params['checkpoint_dir']!r} cannot hold checkpoints: "
                f"{err.strerror or err}"
            ) from None
        if store.files() and params["resume"]:
            store.latest()  # px.restore() gives the newest checkpoint there from the start
        elif store.files():
            store.set_aside("previous-")
        # refused now, by name, if fn or an argument cannot be sent (a lock, a connection)
        params["_blob"] = pack_launch(params["fn"], tuple(params.get("args") or ()),
                                      dict(params.get("kwargs") or {}), params["max_restarts"])
        return LaunchJob(job_id, ProgressHub(), store, name)

    def summarize(self, result: Any) -> dict[str, Any]:
        return {"result": repr(result)[:500]}

    def run(self, ctx: JobContext, params: dict[str, Any]) -> Any:
        from ..training.launch_driver import LaunchDriver
        from ..training.spec import JobSpec
        from ..wire import from_wire

        job = ctx.job
        assert isinstance(job, LaunchJob)
        placement = from_params(PlacementOptions, params)
        spec = JobSpec(job_id=job.id, user_objects=params["_blob"], epochs=1,
                       global_batch=_NO_BATCH, strategy="ddp",
                       torch_threads=placement.torch_threads, same_job=job.id)
        driver = LaunchDriver(ctx.client, spec, store=job._store, hub=job.hub,
                              cancel=job._cancel, recovery=from_params(RecoveryOptions, params),
                              workers=placement.workers, device_names=ctx.device_names,
                              requirements=params.get("requirements"))
        try:
            return from_wire(driver.run())
        except TrainingCancelledError:
            raise JobCancelledError(f"launch job {job.id} was cancelled") from None


def launch(
    fn: Any,
    *args: Any,
    client: Any = None,
    security: Any = None,
    workers: Sequence[str] | None = None,
    name: str | None = None,
    report: Any = True,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    min_workers: int = RecoveryOptions.min_workers,
    max_restarts: int = RecoveryOptions.max_restarts,
    group_timeout: float = RecoveryOptions.group_timeout,
    heartbeat_timeout: float = RecoveryOptions.heartbeat_timeout,
    settle_timeout: float = RecoveryOptions.settle_timeout,
    probe_timeout: float = RecoveryOptions.probe_timeout,
    torch_threads: int | None = PlacementOptions.torch_threads,
    requirements: Sequence[str] | None = None,
    **kwargs: Any,
) -> LaunchJob:
    """Run ``fn(*args, **kwargs)`` once per worker, torchrun-style; returns the job at once.

    In each rank the default torch process group is formed (gloo; NCCL when every rank has its
    own GPU) and ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``, ``GROUP_RANK``, ``TORCHELASTIC_RUN_ID`` are set, so code
    written for torchrun (which may call ``dist.init_process_group`` itself) runs unchanged.
    ``job.result()`` is rank 0's return value, as data; an exception in ``fn`` fails the job at
    once with the rank, the device and the remote traceback (never retried).

    The keywords here are ``launch``'s own, as ``train()`` takes them (``client``, ``workers``,
    ``checkpoint_dir``, the recovery settings, ...); every other keyword is passed to ``fn``.
    ``requirements`` (PEP 508 lines) are checked on each device before its ranks start and
    what is missing is installed into the interpreter its user chose (its kernel), with that
    device's pip configuration; a device that cannot have them fails the job, by name.
    To pass ``fn`` a keyword of the same name as one of launch's, bind it first with
    ``functools.partial``.
    """
    from .runner import start

    params: dict[str, Any] = {
        "fn": fn, "args": args, "kwargs": kwargs, "workers": workers,
        "torch_threads": torch_threads, "resume": resume,
        "checkpoint_dir": None if checkpoint_dir is None else str(checkpoint_dir),
        "min_workers": min_workers, "max_restarts": max_restarts,
        "group_timeout": group_timeout, "heartbeat_timeout": heartbeat_timeout,
        "settle_timeout": settle_timeout, "probe_timeout": probe_timeout,
        "requirements": list(requirements) if requirements else None,
    }
    if workers is not None:
        params["workers"] = list(workers)
    job = start(LaunchWorkload(), params, client=client, security=security, name=name,
                report=report)
    assert isinstance(job, LaunchJob)
    return job
