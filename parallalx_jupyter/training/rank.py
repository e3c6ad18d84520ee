"""The Dask task of one rank: start the rank process, relay its messages, watch for cancel.

The task stays on its worker for the whole job (pinned by the driver) and is the only thing
that talks to Dask on the rank's behalf: it publishes / fetches the rendezvous port through a
scheduler Variable, forwards metrics with ``Worker.log_event`` (queued on the worker's batched
stream, never blocking), forwards checkpoints to the job's control Queue from a background
thread, and turns "my Dask task was cancelled" (``TrainingJob.cancel()`` or the notebook's
client going away) into a "stop" for the rank process. The rank process itself trains (see
``rank_process.py``); if it dies, this task reports it as an infrastructure failure.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any

from .errors import RankInfraError
from .launcher import RankSpec, children_allowed, rank_process_context, worker_slot
from .rank_process import EXIT_ORPHANED, child_main, is_comm_error
from .spec import AttemptPayload

STOP_GRACE_S = 30.0  # after "stop": time to reach a control step, checkpoint and exit


class _Shipper:
    """Background sender to the notebook's control queue (keeps the relay loop responsive)."""

    def __init__(self, name: str, client: Any) -> None:
        from distributed import Queue

        self._queue = Queue(name, client=client)
        self._pending: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="parallalx-ship", daemon=True)
        self._thread.start()

    def send(self, msg: dict[str, Any]) -> None:
        self._pending.put(msg)

    def _run(self) -> None:
        while True:
            msg = self._pending.get()
            if msg is None:
                return
            with contextlib.suppress(Exception):
                self._queue.put(msg, timeout=120)

    def close(self, timeout: float = 120.0) -> None:
        self._pending.put(None)
        self._thread.join(timeout)
        with contextlib.suppress(Exception):
            self._queue.close()


def _fetch_port(var: Any, timeout: float, control: Any, lock: threading.Lock) -> None:
    """Non-zero ranks: wait for rank 0's port on the scheduler and hand it to the process."""
    try:
        msg: tuple[str, Any] = ("port", int(var.get(timeout=timeout)["port"]))
    except Exception as exc:
        msg = ("port", f"rendezvous port not published within {timeout:.0f}s: {exc!r}")
    with lock, contextlib.suppress(OSError, ValueError):
        control.send(msg)


def run_rank(spec: RankSpec, payload: AttemptPayload) -> dict[str, Any]:
    """Dask task entry point for one rank; returns the rank's small summary dict."""
    from distributed import Variable, get_client, get_worker

    worker = get_worker()
    key = worker.get_current_task()
    client = get_client()
    job = payload.job
    with worker_slot(spec.timeout_s):
        ctx = rank_process_context()
        control_r, control_w = ctx.Pipe(duplex=False)
        events_r, events_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=child_main,
            args=(spec, payload, control_r, events_w),
            name=f"parallalx-rank-{spec.rank}",
        )
        with children_allowed():
            proc.start()
        control_r.close()
        events_w.close()
        send_lock = threading.Lock()
        shipper = _Shipper(job.control_queue, client) if spec.rank == 0 else None
        var = Variable(spec.rendezvous_name, client=client)
        if spec.rank != 0:
            threading.Thread(
                target=_fetch_port,
                args=(var, spec.timeout_s, control_w, send_lock),
                name="parallalx-rdzv",
                daemon=True,
            ).start()
        outcome: tuple[str, Any] | None = None
        stop_sent_at: float | None = None
        try:
            while True:
                if events_r.poll(0.05):
                    try:
                        msg = events_r.recv()
                    except (EOFError, OSError):
                        break
                    kind = msg[0]
                    if kind == "metrics":
                        worker.log_event(job.metrics_topic, msg[1])
                    elif kind == "ship" and shipper is not None:
                        shipper.send(msg[1])
                    elif kind == "port":
                        var.set({"port": msg[1]})
                    elif kind in ("done", "error"):
                        outcome = msg
                elif not proc.is_alive():
                    break
                ts = worker.state.tasks.get(key)
                cancelled = ts is None or ts.state in ("cancelled", "released", "forgotten")
                if cancelled and stop_sent_at is None:
                    stop_sent_at = time.monotonic()
                    with send_lock, contextlib.suppress(OSError, ValueError):
                        control_w.send(("stop",))
                if stop_sent_at is not None and time.monotonic() - stop_sent_at > STOP_GRACE_S:
                    break
        finally:
            if shipper is not None:
                shipper.close()  # the final checkpoint must be queued before we return
            with send_lock:
                control_w.close()  # EOF makes a still-running rank process exit
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            events_r.close()
        if outcome is None:
            code = proc.exitcode
            why = "was orphaned" if code == EXIT_ORPHANED else f"exited with code {code}"
            raise RankInfraError(f"rank {spec.rank} process {why} without reporting")
        if outcome[0] == "error":
            err = outcome[1]
            if not isinstance(err, BaseException):
                raise RankInfraError(f"rank {spec.rank}: {err}")
            if is_comm_error(err) and not isinstance(err, RankInfraError):
                raise RankInfraError(f"rank {spec.rank}: {err}")
            raise err
        return outcome[1]
