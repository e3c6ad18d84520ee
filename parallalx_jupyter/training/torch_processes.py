"""Where torch runs on a worker: in children of one forkserver, never in the worker process.

A Dask worker process that imports torch pays the import (2-4 s) before its first job, and
then the rank forkserver pays it again: torch must be imported in a clean, single-threaded
parent before rank processes can be forked from it (forking the worker itself is unsafe: it
has an event loop and thread pools). Measured on the first ``px.launch`` of a fresh cluster,
the two imports in series were 3.4 s + 6.0 s of the 9.5 s to the first step (benchmark (d) in
docs/benchmarks.md). So everything on a worker that needs torch runs in a child of the
forkserver, where torch is already imported:

* rank processes (``rank.py``);
* the environment probe (``preflight.probe_task``): versions, GPUs, gloo TLS;
* the rendezvous store server (``launcher.open_rendezvous``).

The worker process itself never imports torch, which also means it never initialises CUDA
(a CUDA context held by a long-lived worker would cost every GPU some hundreds of MB for as
long as the device serves). parallalx's own workers start the forkserver as soon as they
have joined (``cluster/worker_main.py``), so the first job on a running cluster finds torch
already imported; on any other Dask cluster the first probe starts it.

Where the platform has no forkserver (Windows), rank processes are spawned, and the probe and
the store run in the worker process as they would have without this module.

This module imports only the standard library at its top: ``worker_main.py`` loads it by path
to start the forkserver, so that the worker process needs neither torch nor parallalx.
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from typing import Any

# torch._dynamo: every optimizer's __init__ imports it lazily (~1.1 s here); FSDP and the
# distributed state-dict helpers: the fsdp strategy and checkpoints (~0.7 s). Preloaded once per
# worker, so a job's ranks reach their first step without paying for them.
PRELOAD = [
    "torch",
    "torch.distributed",
    "torch._dynamo",
    "torch.distributed.fsdp",
    "torch.distributed.checkpoint.state_dict",
    "parallalx_jupyter.training.rank_process",
]

#: ``PARALLALX_PRESTART_RANKS=0`` stops a parallalx worker from starting its forkserver when it
#: joins (it then starts with the first job's probe), e.g. on a device short of memory.
PRESTART_ENV = "PARALLALX_PRESTART_RANKS"


def forkserver_available() -> bool:
    import multiprocessing as mp

    return "forkserver" in mp.get_all_start_methods()


def rank_process_context() -> Any:
    """A multiprocessing context for rank processes: forkserver (torch preloaded) or spawn."""
    import multiprocessing as mp

    if forkserver_available():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return mp.get_context("spawn")


def prestart() -> bool:
    """Start this process's forkserver now, without waiting for its imports (False where there
    is none). The server imports :data:`PRELOAD` in its own process; the first child forked
    from it waits for that, nothing else does."""
    if not forkserver_available():
        return False
    from multiprocessing import forkserver

    rank_process_context()
    forkserver.ensure_running()
    return True


def prestart_wanted() -> bool:
    return os.environ.get(PRESTART_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def children_allowed() -> Iterator[None]:
    """Let a daemonic Dask worker (started by a Nanny) start a child process.

    multiprocessing refuses children of daemonic processes because they could be orphaned; ours
    exit on their own when the worker goes away (they watch their pipe for EOF).
    """
    import multiprocessing as mp

    config = mp.current_process()._config  # noqa: SLF001 - no public switch exists
    was = config.get("daemon")
    config["daemon"] = False
    try:
        yield
    finally:
        if was is not None:
            config["daemon"] = was


def start_child(target: Callable[..., Any], *args: Any, name: str) -> tuple[Any, Any]:
    """Start ``target(*args, conn)`` in a child of the forkserver; returns (process, our end of
    a duplex pipe to it). ``target`` must be a module-level function (it travels by name)."""
    ctx = rank_process_context()
    ours, theirs = ctx.Pipe(duplex=True)
    proc = ctx.Process(target=target, args=(*args, theirs), name=name)
    with children_allowed():
        proc.start()
    theirs.close()
    return proc, ours


def stop_child(proc: Any, conn: Any, grace_s: float = 5.0) -> None:
    """Close our end (the child sees EOF and leaves), then make sure it is gone."""
    with contextlib.suppress(OSError):
        conn.close()
    proc.join(grace_s)
    if proc.is_alive():
        proc.kill()
        proc.join(grace_s)


def call_in_child(fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
    """``fn(*args)`` computed in a fresh child of the forkserver (in this process where there
    is no forkserver); its exception is raised here as a :class:`RankInfraError` with the
    child's traceback. ``fn`` and its result must pickle."""
    from .errors import RankInfraError

    if not forkserver_available():
        return fn(*args)
    proc, conn = start_child(_call_main, fn, args, name=f"parallalx-{fn.__name__}")
    try:
        ready = wait([conn, proc.sentinel], timeout=timeout_s)
        if conn in ready:
            with contextlib.suppress(EOFError, OSError):
                kind, value = conn.recv()
                if kind == "ok":
                    return value
                raise RankInfraError(f"{fn.__name__} failed in its torch process:\n{value}")
        if not ready:
            raise RankInfraError(f"{fn.__name__} did not answer within {timeout_s:.0f} s")
        proc.join(5)  # the pipe may reach EOF a moment before the exit is known
        raise RankInfraError(
            f"{fn.__name__}'s torch process exited with code {proc.exitcode} without answering"
        )
    finally:
        stop_child(proc, conn)


def _call_main(fn: Callable[..., Any], args: tuple[Any, ...], conn: Any) -> None:
    try:
        answer: tuple[str, Any] = ("ok", fn(*args))
    except BaseException:  # noqa: BLE001 - reported to the parent as text
        answer = ("error", traceback.format_exc())
    with contextlib.suppress(OSError):
        conn.send(answer)
    conn.close()
    os._exit(0)  # no atexit, no torch destructors: nothing here owns anything
