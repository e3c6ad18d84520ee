"""Start a job of any workload: parameters checked, client chosen, thread started, reported."""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Any

from ..jobs.client import resolve_client
from ..jobs.handle import Job, JobCancelledError, cancelled_text
from ..jobs.reporter import attach_reporter
from .base import JobContext, Workload
from .registry import get

log = logging.getLogger(__name__)


def start(
    workload: str | Workload,
    params: dict[str, Any],
    *,
    client: Any = None,
    security: Any = None,
    name: str | None = None,
    report: Any = True,
    job_id: str | None = None,
    adopt: bool = False,
) -> Job:
    """Run ``workload`` with ``params`` on a Dask cluster in the background; returns its Job.

    ``client``: a ``distributed.Client``, a scheduler address (with ``security=`` for TLS), or
    None for the default client or this device's own cluster. ``report``: put the job in this
    device's job list (True: if its server is found; False: keep it local). ``job_id`` and
    ``adopt``: run a job the server registered already (``POST workloads/{name}/run``).
    """
    wl = get(workload) if isinstance(workload, str) else workload
    checked = wl.validate(params)
    job_id = job_id or uuid.uuid4().hex[:12]
    job = wl.make_job(job_id, (name or wl.job_name(checked))[:200], checked)
    dask_client, owned = resolve_client(client, security)
    reporter = attach_reporter(job, report, adopt=adopt)

    def body() -> None:
        ctx = JobContext(job, dask_client, api=reporter.client if reporter else None)
        try:
            if job.state == "pending":
                job.hub.emit({"kind": "state", "job_id": job_id, "state": "running"})
            result = wl.run(ctx, checked)
            if job.cancel_requested and result is None:
                raise JobCancelledError("cancelled by the user")
        except BaseException as exc:
            if isinstance(exc, JobCancelledError):  # the user's own choice, not an error
                job.hub.emit({"kind": "state", "job_id": job_id, "state": "cancelled",
                              "message": cancelled_text(exc)})
            else:
                job.hub.emit({"kind": "state", "job_id": job_id, "state": "failed",
                              "error": str(exc)})
            _settle(job, reporter, dask_client if owned else None)
            job._future.set_exception(exc)
        else:
            job.hub.emit({"kind": "state", "job_id": job_id, "state": "finished"})
            _settle(job, reporter, dask_client if owned else None)
            job._future.set_result(result)

    threading.Thread(target=body, name=f"parallalx-{wl.name}-{job_id}", daemon=True).start()
    return job


def _settle(job: Job, reporter: Any, owned_client: Any) -> None:
    """Before the caller gets the result: the job list shows the end, owned clients closed."""
    if owned_client is not None:
        try:
            owned_client.close()
        except Exception:
            log.debug("closing the job's client failed", exc_info=True)
    if reporter is not None:
        reporter.join(5)
