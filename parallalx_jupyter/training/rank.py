"""The Dask task of one rank: start the rank process, relay its messages, watch for cancel.

The task stays on its worker for the whole job (pinned by the driver) and is the only thing
that talks to Dask on the rank's behalf. It never opens a Dask client: parallalx's hardened
cluster refuses clients to worker devices (a device must never be able to submit work to other
devices), and the engine must run unchanged there and on any other Dask cluster. So every
channel is one a plain worker already has:

* **Rendezvous**: host and port arrive as task arguments (see ``launcher.py``); rank 0's task
  claims and holds the TCPStore server that the driver's rendezvous task opened on this worker.
* **Metrics**: ``Worker.log_event`` on the job's metrics topic (queued on the worker's batched
  stream to the scheduler, never blocking), forwarded by the scheduler to the subscribed driver.
* **Preflight report and checkpoints** (rank 0 only): ``Worker.log_event`` on the job's ship
  topic, checkpoints split into :data:`CHUNK_BYTES` pieces (:func:`ship_messages`). Chosen over
  the alternatives because it needs nothing a worker does not already have, works through NAT
  (the driver never has to reach a worker directly) and is TLS-encrypted end to end like all
  Dask traffic, unlike a driver connection to rank 0's TCPStore. What it costs: each checkpoint
  crosses the scheduler once (worker -> scheduler -> driver), is held in the worker's send
  buffer until sent, and the scheduler keeps published events in memory (a bounded deque per
  topic); the driver truncates the ship topic after every complete checkpoint and drops it at
  the end (``Driver._drop_topics``), so the scheduler holds about one checkpoint at a time where
  the driver may run functions on the scheduler, and up to its event-log length of chunks
  otherwise. Checkpoints are only sent every ``checkpoint_every`` steps and at the end; for
  models of many GB, raise ``checkpoint_every``.
* **Cancel**: the driver cancels this Dask task (``TrainingJob.cancel()``, or the notebook's
  client going away); the task sees its own state change in ``worker.state`` and forwards a
  "stop" to the rank process, whose ranks agree to stop, ship a last checkpoint and exit.
* **Abort**: when the driver gives up on an attempt because a device was lost, the survivors'
  rank processes are blocked in a collective that waits for it and cannot vote to stop; they
  would linger until the group timeout and hold the worker (the re-formed group's tasks wait
  for its thread). So the driver scatters a small marker under :func:`abort_key` onto each
  survivor (data needs no thread of the worker, unlike a task); seeing it, this task kills its
  rank process at once and fails as an infrastructure error.

The rank process itself trains (see ``rank_process.py``); if it dies, this task reports it as
an infrastructure failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

from .errors import EXIT_ORPHANED, RankInfraError, UserCodeError, is_comm_error
from .launcher import RankSpec, claim_rendezvous, tls_files_of, worker_slot
from .spec import AttemptPayload, JobSpec, with_job
from .torch_processes import children_allowed, rank_process_context

if TYPE_CHECKING:
    from .rank_process import RankBody

STOP_GRACE_S = 30.0  # after "stop": time to reach a control step, checkpoint and exit
ABORT_PREFIX = "parallalx-abort"
CANCEL_CHECK_S = 0.1  # how often an idle relay looks whether its Dask task was cancelled
CHUNK_BYTES = 512 * 1024  # per event: keeps every scheduler message small


def abort_key(job_id: str, attempt: int, rank: int) -> str:
    """The Dask key whose data on a rank's worker tells that rank's task to kill its process."""
    return f"{ABORT_PREFIX}-{job_id}-{attempt}-{rank}"


def ship_messages(msg: dict[str, Any], seq: int) -> Iterator[dict[str, Any]]:
    """Split one shipped message into events: ``data`` (bytes) goes out in chunks.

    Each chunk carries the message's other fields plus ``seq`` (unique per rank task),
    ``index`` and ``count``; the driver reassembles them (``Driver._handle_ship``).
    """
    data = msg.get("data")
    if not isinstance(data, (bytes, bytearray)):
        yield msg
        return
    head = {k: v for k, v in msg.items() if k != "data"}
    count = max(1, -(-len(data) // CHUNK_BYTES))
    view = memoryview(data)
    for i in range(count):
        yield {
            **head,
            "kind": "chunk",
            "of": msg["kind"],
            "seq": seq,
            "index": i,
            "count": count,
            "data": bytes(view[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]),
        }


def run_rank(
    spec: RankSpec,
    shipped: AttemptPayload | tuple[AttemptPayload, JobSpec],
    body: RankBody | None = None,
) -> bytes:
    """Dask task entry point for one rank; returns the rank's small summary dict as data
    (``wire.to_wire``: nothing a device returns is unpickled on the main device).

    ``shipped``: the attempt's payload and the job, each already on this worker (the job
    once per job, ``spec.with_job``). ``body`` is what the rank process runs inside its
    process group (``child_main``): the training loop by default, the user's own function
    for ``launch`` (``launch_rank.py``)."""
    from distributed import get_worker

    from ..wire import to_wire

    worker = get_worker()
    key = worker.get_current_task()
    payload = with_job(shipped)
    job = payload.job
    spec = dataclasses.replace(spec, tls_files=tls_files_of(worker))
    # Rank 0 holds the attempt's store server open for as long as this task runs.
    store = claim_rendezvous(spec.job_id, spec.attempt) if spec.rank == 0 else None
    try:
        return to_wire(_relay(spec, payload, worker, key, job, body))
    finally:
        if store is not None:
            store.close()  # the rendezvous port closes with the job


def _relay(
    spec: RankSpec, payload: AttemptPayload, worker: Any, key: Any, job: Any,
    body: RankBody | None = None,
) -> Any:
    seq = 0
    with worker_slot(spec.timeout_s):
        ctx = rank_process_context()
        control_r, control_w = ctx.Pipe(duplex=False)
        events_r, events_w = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_child_main,
            args=(spec, payload, control_r, events_w, body),
            name=f"parallalx-rank-{spec.rank}",
        )
        with children_allowed():
            proc.start()
        control_r.close()
        events_w.close()
        send_lock = threading.Lock()
        outcome: tuple[str, Any] | None = None
        stop_sent_at: float | None = None
        abort = abort_key(spec.job_id, spec.attempt, spec.rank)
        aborted = False
        exited = False  # the rank process ended while this relay still held its pipes
        try:
            while True:
                # Woken by a message or the process's exit, not by polling: this thread shares
                # the device's cores with the rank it relays for.
                ready = wait([events_r, proc.sentinel], timeout=CANCEL_CHECK_S)
                if events_r in ready:
                    try:
                        msg = events_r.recv()
                    except (EOFError, OSError):
                        exited = True
                        break
                    kind = msg[0]
                    if kind == "metrics":
                        worker.log_event(job.metrics_topic, msg[1])
                    elif kind == "ship":  # rank 0 of the group that trains (it may
                        # have re-formed on fewer devices: ``launcher.regroup``)
                        seq += 1
                        for event in ship_messages(msg[1], seq):
                            worker.log_event(job.ship_topic, event)
                    elif kind in ("done", "error"):
                        outcome = msg
                elif ready:
                    exited = True
                    break  # the rank process exited and left nothing unread
                if outcome is None and abort in worker.data:
                    aborted = True
                    proc.kill()  # blocked in a collective: no stop vote can reach it
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
            with send_lock:
                control_w.close()  # EOF makes a still-running rank process exit
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            events_r.close()
        if aborted:
            raise RankInfraError(
                f"rank {spec.rank} stopped by the driver: another device of the group was lost"
            )
        if outcome is None:
            code = proc.exitcode
            if exited and code is not None and code > 0:
                # Not a signal (a crash, the OOM killer: those are the device's) and not
                # orphaned (this relay, its parent, is here and never closed its pipes): the
                # training code ended its own process. Re-forming would only run it again.
                raise UserCodeError(
                    f"the rank process exited with code {code} before reporting: the training "
                    "code ended its own process (os._exit, or a library that calls exit); "
                    "not retried, it would end the same way", "", spec.rank, spec.worker,
                )
            why = "was orphaned" if code == EXIT_ORPHANED else f"exited with code {code}"
            raise RankInfraError(f"rank {spec.rank} process {why} without reporting")
        if outcome[0] == "error":
            err = outcome[1]
            if not isinstance(err, BaseException):
                raise RankInfraError(f"rank {spec.rank}: {err}")
            if isinstance(err, UserCodeError):  # classified where it was raised, not again
                raise err
            if is_comm_error(err) and not isinstance(err, RankInfraError):
                raise RankInfraError(f"rank {spec.rank}: {err}")
            raise err
        return outcome[1]


def _child_main(*args: Any) -> None:
    """The rank process's entry, named here so that this worker-side module never imports
    ``rank_process`` (and torch with it); the forkserver preloaded it for the child."""
    from .rank_process import child_main

    child_main(*args)
