"""``Job``: the handle every workload's ``run`` returns in the process that started it.

Thread-safe to read from a notebook while the job's background thread updates it: ``state``
(and ``state_message``: why, e.g. which device a ``recovering`` job lost),
``progress`` (the latest progress record), ``history`` (every progress record without per-worker
detail), ``output`` (the last lines its ranks printed, for workloads that forward them:
``launch``), ``events`` (everything else: state changes, workload-specific records). ``result()``
(or ``await job``) gives the workload's result back; ``cancel()`` asks it to stop. Records flow
through one :class:`~parallalx_jupyter.jobs.hub.ProgressHub`, which the notebook
dashboards and the server reporter subscribe to.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from .hub import ProgressHub, Record

HISTORY_LIMIT = 100_000
OUTPUT_LINES = 5000  # the last lines of output a job keeps (all ranks together)
OUTPUT_LINE_CHARS = 4000  # a longer line (a progress bar that never ends one) is cut


def output_prefix(rank: int, device: str) -> str:
    """What goes before each line a rank printed, wherever it is shown."""
    return f"[rank {rank} {device}] " if device else f"[rank {rank}] "


class JobCancelledError(RuntimeError):
    """The job stopped because someone cancelled it (``Job.cancel()``, the panel, the CLI)."""


CANCELLED_BY_USER = "cancelled by the user"


def cancelled_text(exc: BaseException | str | None = None) -> str:
    """What a cancelled job says about it: the user's own choice, in words, never an error
    (``cancelled by the user at step 40``); a workload's own wording is kept after it."""
    detail = str(exc or "").strip()
    if not detail or detail.startswith(CANCELLED_BY_USER):
        return detail or CANCELLED_BY_USER
    return f"{CANCELLED_BY_USER} ({detail})"

DETAIL_KEYS = ("ranks", "workers_detail")  # per-worker parts, kept only in ``progress``


class Job:
    """Handle on a running job of any workload (see the module docstring)."""

    def __init__(self, job_id: str, workload: str, name: str, hub: ProgressHub | None = None):
        self.id = job_id
        self.workload = workload
        self.name = name
        self._hub = hub or ProgressHub()
        self._future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.state = "pending"
        self.state_message: str | None = None
        self.error: str | None = None
        self.progress: Record = {}
        self.history: list[Record] = []
        self.events: list[Record] = []
        self.created_at = time.time()
        #: seconds from the job's start to each phase of its latest attempt (workloads that
        #: run ranks: probe, ship, rendezvous, rank process, process group, first step, ...)
        self.timeline: dict[str, float] = {}
        #: (rank, device, stream, line) of the last :data:`OUTPUT_LINES` lines printed
        self.output: collections.deque[tuple[int, str, str, str]] = collections.deque(
            maxlen=OUTPUT_LINES)
        self._hub.subscribe(self._record)

    @property
    def hub(self) -> ProgressHub:
        return self._hub

    def _record(self, rec: Record) -> None:
        with self._lock:
            kind = rec.get("kind")
            if kind == "progress":
                self.progress = rec
                if len(self.history) < HISTORY_LIMIT:
                    self.history.append({k: v for k, v in rec.items() if k not in DETAIL_KEYS})
                return
            if kind == "output":  # kept as lines, not as events: a chatty job stays small
                rank, device = int(rec.get("rank", 0)), str(rec.get("device", ""))
                for line in str(rec.get("text", "")).splitlines():
                    self.output.append((rank, device, str(rec.get("stream")),
                                        line[:OUTPUT_LINE_CHARS]))
                return
            self.events.append(rec)
            if kind == "timeline":
                marks = rec.get("marks") or {}
                self.timeline = {k: round(v - self.created_at, 4)
                                 for k, v in sorted(marks.items(), key=lambda kv: kv[1])}
            if kind == "state":
                self.state = str(rec["state"])
                message = rec.get("message")
                self.state_message = str(message) if message else None
                if self.state == "cancelled":  # the user's choice: a message, not an error
                    self.state_message = cancelled_text(message or rec.get("error"))
                elif rec.get("error"):
                    self.error = str(rec["error"])
            self._on_record(rec)

    def output_text(self, rank: int | None = None) -> str:
        """The kept output as text, each line after its rank (``[rank 1 gaming-pc] ...``);
        ``rank``: one rank's lines only, as it printed them."""
        with self._lock:
            lines = list(self.output)
        if rank is not None:
            return "".join(f"{line}\n" for r, _d, _s, line in lines if r == rank)
        return "".join(f"{output_prefix(r, d)}{line}\n" for r, d, _s, line in lines)

    def _on_record(self, rec: Record) -> None:
        """Workload-specific bookkeeping of non-progress records (called under the lock)."""

    # ------------------------------------------------------------------ control
    def cancel(self) -> bool:
        """Ask the job to stop at its next chance; False if it has already ended."""
        if self._future.done():
            return False
        self._cancel.set()
        return True

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> Any:
        """The workload's result; re-raises the job's error."""
        return self._future.result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def subscribe(
        self, callback: Callable[[Record], Any], kinds: set[str] | None = None
    ) -> Callable[[], None]:
        """Receive every record (progress, state and workload-specific ones)."""
        return self._hub.subscribe(callback, kinds)

    def __await__(self) -> Generator[Any, None, Any]:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        p = self.progress
        step = p.get("step", p.get("global_step"))
        total = p.get("total", p.get("total_steps"))
        where = f" step {step}/{total}" if step is not None else ""
        return f"<{type(self).__name__} {self.workload} {self.id} {self.state}{where}>"
