"""Workloads: kinds of work the pooled devices run (train, sweep, inference, and plugins').

    from parallalx_jupyter.workloads import run
    job = run("sweep", objective=objective, space={...}, n_trials=20)
    job.result().best_params

A package adds its own workload by subclassing :class:`Workload` and declaring it under the
``parallalx_jupyter.workloads`` entry-point group (docs/workloads.md); it then shows up in the
Python API, the CLI (``parallalx workloads``, ``parallalx run``), the magics and the job list.
"""

from __future__ import annotations

from typing import Any

from ..jobs.handle import Job, JobCancelledError
from .base import JobContext, Workload, WorkloadCancelledError, WorkloadError, load_object
from .registry import available, describe_all, get


def run(
    workload: str | Workload,
    *,
    client: Any = None,
    security: Any = None,
    name: str | None = None,
    report: Any = True,
    **params: Any,
) -> Job:
    """Start ``workload`` with ``params`` on the cluster (see ``runner.start``); returns at once."""
    from .runner import start

    return start(workload, params, client=client, security=security, name=name, report=report)


__all__ = [
    "Job",
    "JobCancelledError",
    "JobContext",
    "Workload",
    "WorkloadCancelledError",
    "WorkloadError",
    "available",
    "describe_all",
    "get",
    "load_object",
    "run",
]
