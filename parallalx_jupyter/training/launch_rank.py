"""The rank side of ``px.launch``: the user's own function, once per rank, torchrun-style.

Each rank runs in the same rank process ``train()`` uses (``rank_process.child_main``, started
by the Dask task of ``rank.py``), so rendezvous, gloo's network interface, rank-traffic TLS,
cancel, abort and recovery are the engine's. Only the *body* differs: :func:`launch_body`
runs ``fn(*args, **kwargs)`` instead of the training loop.

torchrun compatibility, and why it is done this way:

* The default process group is already initialised when ``fn`` starts (gloo; NCCL when every
  rank has its own GPU), through the engine's rendezvous store, with the job's group timeout.
* torchrun's variables are set before ``fn`` runs: ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``ROLE_RANK``, ``ROLE_WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT`` (rank 0's rendezvous store), ``TORCHELASTIC_RUN_ID`` (the job ID),
  ``TORCHELASTIC_RESTART_COUNT`` (the attempt) and ``TORCHELASTIC_MAX_RESTARTS``. "Local" means
  the ranks on the same host (by the worker's address); ``GROUP_RANK`` numbers the hosts.
* Code written for torchrun calls ``dist.init_process_group(...)`` itself. In the rank process
  that call is replaced (:func:`_guard_init`): with the group already formed and the same (or
  no) backend asked for, it returns without doing anything; a different backend (``gloo``
  where the engine chose NCCL) re-forms the default group with it over the same store, under a
  fresh key prefix. So both plain DDP scripts and code that checks ``dist.is_initialized()``
  first (Accelerate, HF Trainer) run unchanged. ``dist.destroy_process_group()`` of the default
  group (at the end of most torchrun scripts; Accelerate's ``end_training``) does nothing: the
  engine owns that group and the rank process leaves without tearing it down (a gloo shutdown
  racing the other ranks' last collective hung a rank until the group timeout, measured: 3 of
  5 launches of a 20-step loop); a subgroup the code made itself is destroyed as asked.

What ``fn`` can call (:mod:`parallalx_jupyter`'s ``report``, ``checkpoint``, ``restore``):
rank 0's reports become the job's progress records (``job.progress``, ``job.history``); rank
0's checkpoints (tensors and plain data, checked with ``torch.load(weights_only=True)`` on the
rank, so a mistake fails where it was made) are shipped to the main device through the same
chunked channel as ``train()``'s and kept there (written atomically to ``checkpoint_dir``);
``restore()`` gives every rank of a re-formed group the newest one. Outside a launched
function they do nothing (``restore()`` returns None), so ``fn`` also runs as plain Python.

End of the run: each rank marks "done" in the rendezvous store and waits (at most the group
timeout) for the others, so a rank whose ``fn`` never returns is reported by rank and device
name (:class:`HungRankError`, a user error: never retried) instead of holding the job forever.
Rank 0's return value travels home as data (``wire.to_wire``) on the ship channel.

What every rank prints (stdout and stderr, Python's or not) reaches the job as ``output``
records, in batches and rate-capped (``rank_output.py``): ``job.output_text()``, the
notebook's job view and ``parallalx launch``'s terminal show it, each line after its rank.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import UserCodeError
from .launcher import RankGroup, RankSpec, host_of
from .spec import AttemptPayload, JobSpec

#: store keys of the end-of-run barrier
_DONE = "parallalx-launch/done/"
_LEFT = "parallalx-launch/left/"


class HungRankError(UserCodeError):
    """A rank's function did not finish (or did not join a collective) within the group
    timeout while the others had: a deadlock or a rank that skips a collective. Restarting
    would hang again, so it is the user's error and never retried."""

    def __str__(self) -> str:
        return self.message


#: rank 0's reports travel together, at most one message per this many seconds: a loop that
#: reports every few steps (40 times a second in benchmark (d)) would otherwise send as many
#: messages through the worker, the scheduler and the driver, on the cores the ranks train on
REPORT_BATCH_S = 0.25


@dataclass
class RankContext:
    """What ``report``/``checkpoint``/``restore`` reach inside a launched rank."""

    spec: RankSpec
    channel: Any
    job_id: str
    resume: bytes | None
    last_step: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: reports not sent yet (rank 0), and when the last batch went
    pending: list[dict[str, Any]] = field(default_factory=list)
    sent_at: float = 0.0
    flusher: threading.Thread | None = None

    def queue_report(self, fields: dict[str, Any]) -> None:
        with self.lock:
            self.pending.append({**fields, "_at": time.monotonic()})  # spacing kept (driver)
            due = time.monotonic() - self.sent_at >= REPORT_BATCH_S
        if due:
            self.flush_reports()
        elif self.flusher is None:  # the last reports of a quiet stretch go out on time
            self.flusher = threading.Thread(target=self._flush_loop, name="launch-report",
                                            daemon=True)
            self.flusher.start()

    def flush_reports(self) -> None:
        """Send what is pending now (before a checkpoint, the result, or when due)."""
        with self.lock:
            batch, self.pending = self.pending, []
            self.sent_at = time.monotonic()
            if batch:  # in the lock: batches leave in order
                self.channel.ship({"kind": "report", "attempt": self.spec.attempt,
                                   "batch": batch})

    def _flush_loop(self) -> None:
        while True:
            time.sleep(REPORT_BATCH_S)
            self.flush_reports()


_CURRENT: RankContext | None = None


# --------------------------------------------------------------------------- torchrun env
def torchrun_env(spec: RankSpec, workers: list[str], max_restarts: int) -> dict[str, str]:
    """torchrun's environment for ``spec``'s rank, ``workers`` being every rank's worker in
    rank order (local rank and group rank come from the workers' hosts)."""
    hosts = [host_of(w) for w in workers]
    mine = hosts[spec.rank]
    order = list(dict.fromkeys(hosts))  # hosts in order of their first rank
    local = [i for i, h in enumerate(hosts) if h == mine]
    return {
        "RANK": str(spec.rank),
        "WORLD_SIZE": str(spec.world_size),
        "LOCAL_RANK": str(local.index(spec.rank)),
        "LOCAL_WORLD_SIZE": str(len(local)),
        "GROUP_RANK": str(order.index(mine)),
        "GROUP_WORLD_SIZE": str(len(order)),
        "ROLE_RANK": str(spec.rank),
        "ROLE_WORLD_SIZE": str(spec.world_size),
        "ROLE_NAME": "default",
        "MASTER_ADDR": spec.master_host,
        "MASTER_PORT": str(spec.master_port),
        "TORCHELASTIC_RUN_ID": spec.job_id,
        "TORCHELASTIC_RESTART_COUNT": str(spec.attempt),
        "TORCHELASTIC_MAX_RESTARTS": str(max_restarts),
        # env:// rendezvous in the user's code connects to rank 0's store as a client
        "TORCHELASTIC_USE_AGENT_STORE": "True",
    }


def _guard_init(spec: RankSpec, group: RankGroup) -> Callable[[], None]:
    """Make the user's ``dist.init_process_group`` work with the group already formed, and
    their ``destroy_process_group()`` of it a no-op (module docstring). Returns what puts
    torch's own ``destroy_process_group`` back once the function has returned (the engine
    tears its group down, or re-forms it, with it)."""
    import torch.distributed as dist
    from torch.distributed import distributed_c10d as c10d

    original = c10d.init_process_group
    destroy = c10d.destroy_process_group
    count = [0]

    def destroy_process_group(group: Any = None) -> None:
        if group is None or group is c10d.GroupMember.WORLD:
            return None  # the engine's default group: it outlives the function
        return destroy(group)

    def init_process_group(backend: Any = None, *args: Any, **kwargs: Any) -> None:
        wanted = str(backend or "").lower()
        if dist.is_initialized() and (not wanted or spec.backend in wanted):
            return None  # the engine's group is the one asked for
        if dist.is_initialized():
            destroy()
        count[0] += 1
        timeout = kwargs.get("timeout") or _dt.timedelta(seconds=spec.timeout_s)
        store = dist.PrefixStore(f"parallalx-user-{count[0]}/", group.store)
        return original(wanted or spec.backend, store=store, rank=spec.rank,
                        world_size=spec.world_size, timeout=timeout)

    init_process_group.__doc__ = original.__doc__
    destroy_process_group.__doc__ = destroy.__doc__
    dist.init_process_group = init_process_group
    c10d.init_process_group = init_process_group
    dist.destroy_process_group = destroy_process_group
    c10d.destroy_process_group = destroy_process_group

    def unguard() -> None:
        dist.destroy_process_group = destroy
        c10d.destroy_process_group = destroy

    return unguard


# --------------------------------------------------------------------------- the payload
def pack_launch(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                max_restarts: int) -> bytes:
    """cloudpickle ``fn`` and its arguments for the workers (``spec.dumps_for_workers``: one
    that cannot travel, such as a lock or a connection, is named with the way out)."""
    from .spec import dumps_for_workers

    named: dict[str, Any] = {"max_restarts": max_restarts, "layout": (len(args), tuple(kwargs)),
                             "fn": fn}
    named.update({f"fn's argument {i}": a for i, a in enumerate(args)})
    named.update({f"fn's keyword argument {k!r}": v for k, v in kwargs.items()})
    return dumps_for_workers(named)


def unpack_launch(blob: bytes) -> tuple[Any, tuple[Any, ...], dict[str, Any], int]:
    """Inverse of :func:`pack_launch`, on the rank: ``(fn, args, kwargs, max_restarts)``."""
    import cloudpickle

    values = cloudpickle.loads(blob)
    max_restarts, (n_args, keys), fn = values[:3]
    args = tuple(values[3:3 + n_args])
    return fn, args, dict(zip(keys, values[3 + n_args:], strict=True)), int(max_restarts)


# --------------------------------------------------------------------------- the body
def launch_body(spec: RankSpec, payload: AttemptPayload, channel: Any,
                marks: dict[str, float], group: RankGroup) -> dict[str, Any]:
    """Run the user's function on this rank (``rank_process.child_main``'s body)."""
    global _CURRENT
    import torch

    from ..wire import WireError, to_wire
    from .rank_process import EXIT_FAILED, user_code

    names = dict(payload.names or {spec.worker: spec.worker})
    workers = list(names) if len(names) == spec.world_size else [spec.worker] * spec.world_size
    label = names.get(spec.worker, spec.worker)
    where = f"{label}" if label == spec.worker else f"{label} ({spec.worker})"
    with user_code("unpickling the launched function on the worker", spec.rank, where):
        fn, args, kwargs, max_restarts = unpack_launch(payload.job.user_objects)
    os.environ.update(torchrun_env(spec, workers, max_restarts))
    if spec.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(spec.device))
    unguard = _guard_init(spec, group)
    _stop_on_cancel(channel, EXIT_FAILED)
    _CURRENT = RankContext(spec, channel, spec.job_id, payload.resume)
    if payload.resume:
        _CURRENT.last_step = int(_unpack(payload.resume).get("global_step", -1))
    marks["fn_start"] = time.time()
    if spec.rank == 0:  # the job's timeline: where the time went before the function ran
        channel.ship({"kind": "timeline", "attempt": spec.attempt, "marks": dict(marks)})
    with user_code(f"{_name_of(fn)}", spec.rank, where):
        try:
            value = fn(*args, **kwargs)
        except SystemExit as exc:  # a script's sys.exit(0) is a normal end
            if exc.code not in (None, 0):
                raise RuntimeError(f"exited with status {exc.code}") from None
            value = None
        finally:
            unguard()
            _CURRENT.flush_reports()
            channel.end_output()  # before the result or the error: what it printed comes first
    marks["fn_end"] = time.time()
    if spec.rank == 0:
        channel.ship({"kind": "timeline", "attempt": spec.attempt, "marks": dict(marks)})
    result = b""
    if spec.rank == 0:
        try:
            result = to_wire(value)
        except WireError as err:
            raise UserCodeError(
                f"{_name_of(fn)} returned a value that cannot travel back to the main device "
                f"({err}); return numbers, strings, lists, dicts and tensors (a model: its "
                "state_dict())", "", spec.rank, where,
            ) from None
    _finish_together(spec, group, names, workers)
    if spec.rank == 0:
        channel.ship({"kind": "result", "attempt": spec.attempt, "global_step": 0,
                      "data": result})
    return {"rank": spec.rank}


def _name_of(fn: Any) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return f"{name}()" if name else type(fn).__name__


def _stop_on_cancel(channel: Any, code: int) -> None:
    """A cancelled job's ranks leave at once: the user's function has no stop vote to see."""

    def watch() -> None:
        while not channel.stop_requested():
            time.sleep(0.1)
        os._exit(code)

    threading.Thread(target=watch, name="launch-cancel", daemon=True).start()


def _finish_together(spec: RankSpec, group: RankGroup, names: dict[str, str],
                     workers: list[str]) -> None:
    """Wait (at most the group timeout) until every rank's function has returned; name the
    ranks that did not. Rank 0 holds the store: it leaves after the others have read it."""
    store = group.store
    store.set(f"{_DONE}{spec.rank}", b"1")
    keys = [f"{_DONE}{r}" for r in range(spec.world_size)]
    try:
        store.wait(keys, _dt.timedelta(seconds=spec.timeout_s))
    except Exception:
        missing = [r for r in range(spec.world_size) if not store.check([keys[r]])]
        if not missing:
            return
        who = ", ".join(f"rank {r} on {names.get(workers[r], workers[r])}" for r in missing)
        raise HungRankError(
            f"{who} did not finish within the group timeout ({spec.timeout_s:.0f} s) after "
            f"rank {spec.rank} had: its function hangs (a deadlock, a wait that never ends, or "
            "a collective the other ranks skipped)", "", spec.rank, spec.worker,
        ) from None
    store.set(f"{_LEFT}{spec.rank}", b"1")
    if spec.rank == 0:
        with contextlib.suppress(Exception):
            store.wait([f"{_LEFT}{r}" for r in range(1, spec.world_size)],
                       _dt.timedelta(seconds=10))


# --------------------------------------------------------------------------- user API
def report(step: int | None = None, loss: Any = None, **metrics: Any) -> None:
    """Report progress from a launched function (rank 0's reports reach the job).

    ``step``, ``loss`` and any other metrics (numbers, strings, 1-element tensors) become a
    progress record: ``job.progress``, ``job.history``, the job list and panel. Other ranks'
    reports are dropped (every rank usually reports the same numbers). Outside ``launch``:
    does nothing.
    """
    ctx = _CURRENT
    if ctx is None or ctx.spec.rank != 0:
        return
    fields = {k: _plain(k, v) for k, v in {"step": step, "loss": loss, **metrics}.items()
              if v is not None}
    if "step" in fields:
        with ctx.lock:
            ctx.last_step = max(ctx.last_step, int(fields["step"]))
    ctx.queue_report(fields)


def _plain(name: str, value: Any) -> Any:
    """A metric as plain data (tensors of one element as numbers)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            pass
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float, str))
                                                for v in value):
        return list(value)
    raise TypeError(f"report(): metric {name!r} must be a number or a string, "
                    f"not {type(value).__name__}")


def checkpoint(state: dict[str, Any], step: int | None = None) -> None:
    """Ship ``state`` (a dict of tensors and plain data, e.g. model and optimizer state
    dicts) to the main device, which keeps the newest (and writes it atomically to the
    job's ``checkpoint_dir``). Rank 0's is kept; other ranks' calls do nothing.

    ``step`` orders checkpoints (an older one never replaces a newer); by default the last
    step reported, or one more than the previous checkpoint. Outside ``launch``: nothing.
    """
    ctx = _CURRENT
    if ctx is None or ctx.spec.rank != 0:
        return
    from .checkpoint import FORMAT_VERSION, pack

    if not isinstance(state, dict):
        raise TypeError(f"checkpoint() takes a dict (a state dict), not {type(state).__name__}")
    with ctx.lock:
        if step is None:
            step = ctx.last_step + 1 if ctx.last_step >= 0 else 0
        ctx.last_step = max(ctx.last_step, int(step))
    data = pack({"format": FORMAT_VERSION, "global_step": int(step), "state": state,
                 "meta": {"job_id": ctx.job_id, "attempt": ctx.spec.attempt,
                          "launch": True, "time": time.time()}})
    try:
        _unpack(data)
    except Exception as err:
        raise TypeError(
            "checkpoint(): the state must hold only tensors and plain data (numbers, strings, "
            f"lists, dicts), as torch.load(weights_only=True) reads: {err}"
        ) from None
    ctx.flush_reports()  # the steps it reported before come first
    ctx.channel.ship({"kind": "checkpoint", "attempt": ctx.spec.attempt,
                      "global_step": int(step), "data": data})


def restore() -> dict[str, Any] | None:
    """The newest checkpoint of this job (its ``state`` dict, tensors on the CPU), or None.

    After a device was lost, every rank of the re-formed group gets the checkpoint rank 0
    shipped last; a job started with ``checkpoint_dir`` holding checkpoints gets the newest
    there. Outside ``launch``: None.
    """
    ctx = _CURRENT
    if ctx is None or not ctx.resume:
        return None
    return _unpack(ctx.resume).get("state")


def _unpack(data: bytes) -> dict[str, Any]:
    from .checkpoint import unpack

    return unpack(data)


def in_launch() -> bool:
    """True inside a function ``launch`` runs."""
    return _CURRENT is not None


def run_launch_rank(
    spec: RankSpec, shipped: AttemptPayload | tuple[AttemptPayload, JobSpec]
) -> bytes:
    """Dask task of one launched rank: ``rank.run_rank`` with the user's function as body."""
    from .rank import run_rank

    return run_rank(spec, shipped, launch_body)


__all__ = ["HungRankError", "checkpoint", "in_launch", "launch_body", "report", "restore",
           "run_launch_rank", "torchrun_env"]
