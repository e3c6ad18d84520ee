"""The workload protocol: what a kind of work must say so every surface can run it.

A workload is a class (found through the ``parallalx_jupyter.workloads`` entry-point group)
with a ``name``, a one-line ``description``, a JSON-Schema ``parameters`` object and a
``run(ctx, params)`` method. parallalx does the rest the same way for all of them: checks the
parameters (one clear line on a mistake), picks the Dask client, creates the :class:`Job`
handle, runs ``run`` in a background thread, puts the job in the device's job list (panel,
CLI, other kernels see it and can cancel it), and returns ``run``'s value as the job's result.

``run`` splits the work over the cluster itself (``ctx.client`` is a plain
``distributed.Client``), reports with ``ctx.progress(...)``, stops when ``ctx.cancelled``
turns true (``ctx.check_cancelled()`` raises for it) and decides what a lost worker means
for it (retry its part elsewhere, restart from a checkpoint, fail). See docs/workloads.md.

Parameters that are Python objects (a model, a data set, a function) are declared with
``{"x-python": true}``: from Python they are passed as objects; from the CLI or a magic as
``"package.module:attribute"`` strings, imported by :func:`load_object`.
"""

from __future__ import annotations

import importlib
import math
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..errors import ParallalxError
from ..jobs.handle import Job, JobCancelledError


class WorkloadError(ParallalxError, ValueError):
    """A workload cannot start: parameters that fail its schema (one line)."""


class UnknownWorkloadError(WorkloadError):
    """No workload of that name is installed."""

    status = 404


class WorkloadCancelledError(JobCancelledError):
    """Raised by ``JobContext.check_cancelled`` inside ``run``."""


def load_object(ref: str, what: str) -> Any:
    """``"package.module:attribute"`` -> the object (for parameters given as text)."""
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise WorkloadError(f"{what}: expected 'package.module:attribute', got {ref!r}")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as err:  # a relative name is a TypeError; the module's own code, anything
        raise WorkloadError(f"{what}: cannot import {ref!r}: {err}") from None
    return obj


def require_references(workload: str, schema: dict[str, Any], params: dict[str, Any]) -> None:
    """Parameters that arrive as JSON (the REST API, ``parallalx run``) can only name a Python
    object: any other value skips the schema check (which Python objects must) and would fail
    only later, on a worker. Python callers pass objects and do not come through here."""
    props: dict[str, Any] = schema.get("properties", {})
    for key, value in params.items():
        prop = props.get(key)
        if not (isinstance(prop, dict) and prop.get("x-python")) or isinstance(value, str):
            continue
        # plain data that JSON can carry as it is (launch's args and kwargs): "x-json" names
        # the JSON type that passes unchanged
        data = {"array": list, "object": dict}.get(prop.get("x-json", ""))
        if data is not None and isinstance(value, data):
            continue
        also = f" or a JSON {prop['x-json']}" if data is not None else ""
        raise WorkloadError(
            f"{workload}: parameter '{key}' must be a 'package.module:attribute' string{also}"
        )


class JobContext:
    """What ``Workload.run`` gets: the cluster, the job, and ways to report and stop."""

    def __init__(self, job: Job, client: Any, api: Any = None) -> None:
        self.job = job
        self.client = client
        #: the ``ApiClient`` of the server the job reports to (None: found when needed)
        self.api = api

    def device_names(self) -> dict[str, str]:
        """Device ID -> name, from the server the job reports to (``jobs.client``): the one
        ``report=`` named, not whichever server this process would find."""
        from ..jobs.client import device_names

        return device_names(self.api)

    @property
    def cancelled(self) -> bool:
        return self.job.cancel_requested

    def check_cancelled(self) -> None:
        if self.job.cancel_requested:
            raise WorkloadCancelledError(f"{self.job.workload} job {self.job.id} was cancelled")

    def progress(self, **fields: Any) -> None:
        """Report progress: ``step``, ``total``, ``loss``, ``samples_per_s``, ``eta_s``,
        ``workers``, ``message`` are shown everywhere; any other field stays in
        ``job.progress``/``job.history`` for the workload's own views."""
        self.job.hub.emit({"kind": "progress", "job_id": self.job.id, "time": time.time(),
                           **fields})

    def record(self, kind: str, **fields: Any) -> None:
        """A workload-specific record (``job.events``), e.g. one finished trial."""
        self.job.hub.emit({"kind": kind, "job_id": self.job.id, "time": time.time(), **fields})

    def worker_info(self) -> dict[str, Any]:
        """The cluster's workers now (address -> Dask's info), asked of the scheduler itself:
        ``Client.scheduler_info()`` returns the client's cache, which its periodic refresh
        overwrites without workers, so it can read as "none" (the full suite caught the
        inference workload putting every shard back: all three workers "left the cluster").
        """
        return dict(self.client.sync(self.client.scheduler.identity, n_workers=-1)["workers"])

    def workers(self) -> list[str]:
        """Addresses of the cluster's workers now (:meth:`worker_info`)."""
        return sorted(self.worker_info())


class Workload(ABC):
    """Subclass this (see the module docstring) and declare it as an entry point."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    parameters: ClassVar[dict[str, Any]] = {"type": "object", "properties": {}}
    job_class: ClassVar[type[Job]] = Job

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """Check ``params`` against ``parameters``; fill defaults; import text references."""
        return validate_params(self.name, self.parameters, params)

    def job_name(self, params: dict[str, Any]) -> str:
        """The name shown in job lists."""
        return self.name

    def make_job(self, job_id: str, name: str, params: dict[str, Any]) -> Job:
        return self.job_class(job_id, self.name, name)

    @abstractmethod
    def run(self, ctx: JobContext, params: dict[str, Any]) -> Any:
        """Do the work on ``ctx.client``'s cluster; the return value is the job's result."""

    def summarize(self, result: Any) -> dict[str, Any]:
        """A short JSON-able account of ``result`` (what the CLI prints)."""
        return {"result": repr(result)[:500]}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, description and parameter schema, as the API and the CLI list them."""
        return {"name": cls.name, "description": cls.description, "parameters": cls.parameters}


def validate_params(workload: str, schema: dict[str, Any], params: Any) -> dict[str, Any]:
    from .schema_check import first_error

    if not isinstance(params, dict):
        raise WorkloadError(f"{workload}: parameters must be a mapping of names to values")
    props: dict[str, Any] = schema.get("properties", {})
    unknown = sorted(set(params) - set(props)) if schema.get("additionalProperties") is False \
        else []
    if unknown:
        raise WorkloadError(
            f"{workload}: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(props)}"
        )
    python = {k for k, p in props.items() if isinstance(p, dict) and p.get("x-python")}
    out = dict(params)
    for key in python & set(out):
        if isinstance(out[key], str):
            out[key] = load_object(out[key], f"{workload}: parameter '{key}'")
    checked = {k: v for k, v in out.items() if k not in python}
    json_schema = {
        **schema,
        "properties": {k: v for k, v in props.items() if k not in python},
        "required": [r for r in schema.get("required", []) if r not in python],
    }
    missing = [r for r in schema.get("required", []) if r in python and r not in out]
    if missing:
        raise WorkloadError(f"{workload}: missing parameter(s) {', '.join(missing)}")
    error = first_error(json_schema, checked)
    if error is not None:
        where, message = error
        prefix = f"parameter '{where}'" if where else "parameters"
        raise WorkloadError(f"{workload}: {prefix}: {message}")
    for key, value in checked.items():
        out[key] = _plain_number(workload, key, value, props.get(key))
    for key, prop in props.items():
        if key not in out and isinstance(prop, dict) and "default" in prop:
            out[key] = prop["default"]
    return out


def _plain_number(workload: str, key: str, value: Any, prop: Any) -> Any:
    """What the schema lets through but the work cannot use, settled here: NaN and infinity
    (a NaN timeout excluded every worker as unresponsive; a NaN clip norm trained NaN
    weights), and a whole float where an integer goes (``epochs=2.0`` passes JSON Schema,
    then ``range()`` refused it on every rank, retried as a lost device)."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        raise WorkloadError(f"{workload}: parameter '{key}' must be a finite number")
    kinds = prop.get("type") if isinstance(prop, dict) else None
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if isinstance(value, float) and "integer" in kinds and "number" not in kinds:
        return int(value)  # the schema check passed: a whole number
    return value

