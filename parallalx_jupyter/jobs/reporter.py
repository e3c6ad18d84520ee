"""Feed a running job's progress to this device's Jupyter server, and bring cancels back.

The reporter is the owner side of the jobs API (``server.job_registry``): it registers the job, then
posts state and progress from its own thread at most ``interval`` apart (and a heartbeat every
``heartbeat`` seconds while nothing changes, so the server can tell a quiet job from a dead
kernel). What the job's ranks print (``output`` records) is posted in the same bodies, the
newest lines when there are more than the server keeps. Each answer says whether a user asked
to cancel (from the panel, the CLI or another kernel); the reporter then calls
``job.cancel()``. A state record's ``message`` (``recovering``:
which device was lost and why; before the first step the phase, e.g. ``preflight: timing
devices…``; ``cancelled by the user``, never posted as an error) becomes the job's status
line, and while ``recovering`` the speed and ETA of the lost group are cleared rather than
left to mislead. Speed and ETA are posted as the job computed them (smoothed once, by
``jobs.speed``), so every surface shows the same numbers. Training never
waits on it: records are only copied under a lock, and an unreachable server just means the
job stays local (it is retried with a growing delay, the job's final state is always tried
once more at the end).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import sys
import threading
import time
from typing import Any

from ..client import ApiClient, ClientError, locate_server
from . import FINAL_STATES
from .handle import OUTPUT_LINE_CHARS, Job, cancelled_text
from .hub import Record

log = logging.getLogger(__name__)

LOSS_BATCH = 1000  # most loss points per post (the API's limit)
OUTPUT_POST = 500  # most output lines per post (the API's limit, and all the server keeps)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    n = _num(value)
    return int(n) if n is not None and n >= 0 else None


def summarize(rec: Record) -> dict[str, Any]:
    """A progress record (training's or any workload's) in the API's progress fields."""
    step = _int(rec.get("step", rec.get("global_step")))
    total = _int(rec.get("total", rec.get("total_steps")))
    fraction = _num(rec.get("fraction"))
    if fraction is None and step is not None and total:
        fraction = step / total
    workers = rec.get("workers")
    if not isinstance(workers, int):
        ranks = rec.get("ranks")
        workers = len(ranks) if isinstance(ranks, list) else None
    message = rec.get("message")
    devices = rec.get("devices")
    return {
        "step": step,
        "total": total,
        "fraction": None if fraction is None else min(max(fraction, 0.0), 1.0),
        "loss": _num(rec.get("loss")),
        "samples_per_s": _num(rec.get("samples_per_s")),
        "eta_s": _num(rec.get("eta_s")),
        "workers": workers,
        # the ranks' devices by name (the driver's labels): what the panel shows as Workers
        "devices": [str(d)[:200] for d in devices[:64]] if isinstance(devices, list) else None,
        "message": str(message)[:500] if message is not None else None,
    }


def owner_kind() -> str:
    if os.environ.get("PARALLALX_JOB_OWNER") in ("cli", "server"):
        return os.environ["PARALLALX_JOB_OWNER"]
    kernelapp = sys.modules.get("ipykernel.kernelapp")  # a Jupyter kernel, not just IPython
    if kernelapp is not None and kernelapp.IPKernelApp.initialized():
        return "kernel"
    return "python"


class JobReporter:
    """Mirror ``job`` into the job list of the server behind ``client`` (see module docs)."""

    def __init__(
        self, job: Job, client: ApiClient, *, interval: float = 0.5, heartbeat: float = 5.0
    ) -> None:
        self.job = job
        self.client = client
        self.interval = interval
        self.heartbeat = heartbeat
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._latest: Record | None = None
        self._loss: list[float] = []
        self._state: str | None = None
        # progress fields a state record sets: (fields, kept until the state changes)
        self._forced: tuple[dict[str, Any], bool] | None = None
        self._error: str | None = None
        #: lines printed since the last post, {rank, device, stream, line}, the newest kept
        self._output: collections.deque[dict[str, Any]] = collections.deque(maxlen=OUTPUT_POST)
        self._final = False
        self.registered = False
        self.failures = 0
        self._thread = threading.Thread(
            target=self._run, name=f"parallalx-report-{job.id}", daemon=True
        )

    def start(self, adopt: bool = False) -> JobReporter:
        """Register the job (synchronously: a refusal is known at once), then report.

        ``adopt``: the server registered it already (a job it started, ``server.job_spawner``)."""
        if not adopt:
            owner = {"kind": owner_kind(), "pid": os.getpid(),
                     "host": socket.gethostname()[:255]}
            self.client.call("POST", "jobs", {"id": self.job.id, "workload": self.job.workload,
                                              "name": self.job.name[:200], "owner": owner})
        self.registered = True
        self.job.subscribe(self._on_record)
        self._thread.start()
        return self

    def _on_record(self, rec: Record) -> None:
        with self._lock:
            kind = rec.get("kind")
            if kind == "progress":
                self._latest = rec
                loss = _num(rec.get("loss"))
                if loss is not None:
                    self._loss.append(loss)
            elif kind == "output":
                rank, device = int(rec.get("rank", 0)), str(rec.get("device", ""))[:200]
                stream = "stderr" if rec.get("stream") == "stderr" else "stdout"
                self._output.extend(
                    {"rank": rank, "device": device, "stream": stream,
                     "line": line[:OUTPUT_LINE_CHARS]}
                    for line in str(rec.get("text", "")).splitlines())
            elif kind == "state":
                self._state = str(rec.get("state"))
                message = rec.get("message")
                cancelled = self._state == "cancelled"
                if cancelled:  # the user's own choice: said in the status line, not an error
                    message = cancelled_text(message or rec.get("error"))
                if self._state == "recovering":
                    self._forced = ({"message": str(message or "recovering")[:500],
                                     "eta_s": None, "samples_per_s": None}, True)
                elif message is not None or self._forced is not None:
                    self._forced = ({"message": str(message)[:500] if message else None}, False)
                if rec.get("error") and not cancelled:
                    self._error = str(rec["error"])[:20_000]
                if self._state in FINAL_STATES:
                    self._final = True
                self._wake.set()  # a new state or phase shows at once, not an interval later

    def _take(self) -> dict[str, Any] | None:
        with self._lock:
            body: dict[str, Any] = {}
            if self._state is not None:
                body["state"] = self._state
                self._state = None
            if self._latest is not None:
                body["progress"] = summarize(self._latest)
                self._latest = None
            if self._forced is not None:
                fields, sticky = self._forced
                body["progress"] = {**body.get("progress", {}), **fields}
                if not sticky:
                    self._forced = None
            if self._loss:
                body["loss"], self._loss = self._loss[:LOSS_BATCH], self._loss[LOSS_BATCH:]
            if self._error is not None:
                body["error"], self._error = self._error, None
            if self._output:
                body["output"] = list(self._output)
                self._output.clear()
            return body

    def _post(self, body: dict[str, Any]) -> bool:
        try:
            answer = self.client.call("POST", f"jobs/{self.job.id}/progress", body, timeout=10)
        except ClientError as err:
            self.failures += 1
            if err.status == 409 or err.status == 404:  # ended or removed on the server
                return True
            log.debug("job %s: progress not reported: %s", self.job.id, err)
            with self._lock:  # put it back: the next post carries it
                if "state" in body and self._state is None:
                    self._state = body["state"]
                    message = body.get("progress", {}).get("message", False)
                    if self._forced is None and message is not False:
                        self._forced = ({"message": message}, body["state"] == "recovering")
                if "loss" in body:
                    self._loss = body["loss"] + self._loss
                if "error" in body and self._error is None:
                    self._error = body["error"]
                if "output" in body:  # older lines first; the newest OUTPUT_POST are kept
                    self._output.extendleft(reversed(body["output"]))
            return False
        self.failures = 0
        if isinstance(answer, dict) and answer.get("cancel_requested"):
            self.job.cancel()
        return True

    def _run(self) -> None:
        last_post = 0.0
        while True:
            delay = self.interval * min(2 ** self.failures, 20)
            self._wake.wait(delay)
            self._wake.clear()
            with self._lock:
                final = self._final
            body = self._take()
            if body or time.monotonic() - last_post >= self.heartbeat:
                ok = self._post(body or {})
                last_post = time.monotonic()
                if final and (ok or self.failures > 3):
                    return
            if final and not body:
                return

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def attach_reporter(
    job: Job, report: bool | Any = True, adopt: bool = False
) -> JobReporter | None:
    """Report ``job`` to this device's server if one is found; None when it stays local.

    ``report``: True (find the server as the notebook does, ``client.locate_server``: this
    kernel's server, ``PARALLALX_URL``/``PARALLALX_TOKEN``, ``<home>/server.json``), False, or
    an ``ApiClient``.
    ``PARALLALX_REPORT_JOBS=0`` turns reporting off.
    """
    if report is False or os.environ.get("PARALLALX_REPORT_JOBS", "1") in ("0", "false", "no"):
        return None
    client = report if isinstance(report, ApiClient) else None
    if client is None:
        try:
            ref = locate_server()
        except Exception as err:  # no server of this device: the job stays local
            log.debug("job %s not reported: %s", job.id, err)
            return None
        client = ApiClient(ref.url, ref.token, timeout=10)
    try:
        return JobReporter(job, client).start(adopt=adopt)
    except ClientError as err:
        log.info("job %s is not in the device's job list: %s", job.id, err)
        return None
