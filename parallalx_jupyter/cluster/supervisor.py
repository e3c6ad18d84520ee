"""Asyncio supervisor for one long-running child process (scheduler or worker).

* Each child runs in its own process group / session, so ``stop()`` terminates the child
  *and* anything it spawned (SIGTERM to the group, SIGKILL after ``stop_timeout``).
* Each child gets a stdin pipe that the supervisor never writes to. The children
  (``scheduler.py --parent-watch``, ``worker_main.py``) exit when it reaches EOF, so they die
  with the controlling process even if that one is SIGKILLed. An ``atexit`` hook also kills
  every live group on a normal interpreter exit.
* Unexpected exits are restarted with exponential backoff (reset after a stable run); exit
  codes in ``permanent_exit_codes`` (e.g. "admission refused") stop the supervisor instead.
* Optional RSS watchdog (``memory_limit`` bytes, whole process tree) kills a child that
  exceeds it; that counts as a crash (restart with backoff), like Dask's nanny would.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import subprocess
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger("parallalx_jupyter.cluster.supervisor")

IDLE = "idle"
STARTING = "starting"
RUNNING = "running"
BACKOFF = "backoff"
REFUSED = "refused"
FAILED = "failed"
STOPPING = "stopping"
STOPPED = "stopped"

_LIVE: weakref.WeakSet = weakref.WeakSet()


def _kill_all_at_exit() -> None:  # pragma: no cover - exercised at interpreter exit
    for sup in list(_LIVE):
        sup._kill_now()


atexit.register(_kill_all_at_exit)


class ProcessSupervisor:
    """Keep ``argv`` running until :meth:`stop`.

    ``on_event(dict)`` is called (synchronously, never with secrets) on every state change:
    ``{"name", "state", "pid", "exit_code", "restarts", "delay"}``.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "process",
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        backoff_factor: float = 2.0,
        stable_after: float = 30.0,
        max_restarts: int | None = None,
        permanent_exit_codes: Sequence[int] = (),
        stop_timeout: float = 10.0,
        memory_limit: int | None = None,
        memory_check_interval: float = 1.0,
        on_event: Callable[[dict], None] | None = None,
    ):
        self.argv = [str(a) for a in argv]
        self.name = name
        self.env = env
        self.cwd = str(cwd) if cwd else None
        self.log_path = Path(log_path) if log_path else None
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_factor = backoff_factor
        self.stable_after = stable_after
        self.max_restarts = max_restarts
        self.permanent_exit_codes = set(permanent_exit_codes)
        self.stop_timeout = stop_timeout
        self.memory_limit = memory_limit
        self.memory_check_interval = memory_check_interval
        self.on_event = on_event

        self.state = IDLE
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.started_at: float | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task | None = None
        self._stop_event: asyncio.Event | None = None
        self._state_changed: asyncio.Condition | None = None

    # --- public ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.returncode is None else None

    async def start(self) -> None:
        """Spawn the process (returns once it is spawned) and keep supervising it."""
        if self._task is not None and not self._task.done():
            return
        self._stop_event = asyncio.Event()
        self._state_changed = asyncio.Condition()
        spawned = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(spawned), name=f"supervise-{self.name}")
        _LIVE.add(self)
        await spawned

    async def stop(self) -> None:
        """Stop supervising; terminate the process group (SIGKILL after ``stop_timeout``)."""
        if self._stop_event is None:
            self._set_state(STOPPED)
            return
        self._stop_event.set()
        await self._terminate()
        if self._task is not None:
            try:
                await self._task
            except Exception:  # pragma: no cover
                logger.exception("supervisor task for %s failed", self.name)
        _LIVE.discard(self)
        if self.state not in (REFUSED, FAILED):
            self._set_state(STOPPED)

    async def restart_now(self) -> None:
        """Terminate the current process; the loop restarts it immediately."""
        await self._terminate(restart=True)

    async def wait_for(self, states: Sequence[str] | str, timeout: float | None = None) -> str:
        """Wait until ``state`` is one of ``states``; returns it."""
        if isinstance(states, str):
            states = (states,)
        assert self._state_changed is not None, "start() first"

        async def _wait():
            async with self._state_changed:
                await self._state_changed.wait_for(lambda: self.state in states)
            return self.state

        return await asyncio.wait_for(_wait(), timeout)

    # --- internals -------------------------------------------------------------------------
    def _set_state(self, state: str, **extra) -> None:
        self.state = state
        event = {
            "name": self.name,
            "state": state,
            "pid": self.pid,
            "exit_code": self.last_exit_code,
            "restarts": self.restarts,
        }
        event.update(extra)
        logger.info("%s: %s", self.name, {k: v for k, v in event.items() if k != "name"})
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # pragma: no cover
                logger.exception("on_event callback failed")
        cond = self._state_changed
        if cond is not None:

            async def _notify():
                async with cond:
                    cond.notify_all()

            try:
                asyncio.get_running_loop().create_task(_notify())
            except RuntimeError:  # no running loop (atexit)
                pass

    async def _spawn(self) -> asyncio.subprocess.Process:
        kwargs: dict = {}
        if os.name == "posix":
            kwargs["start_new_session"] = True
        else:  # pragma: no cover - Windows
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(self.log_path, "ab")
            log.write(f"\n--- {time.ctime()} start {self.name}\n".encode())
            log.flush()
        else:
            log = subprocess.DEVNULL
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT if self.log_path is not None else subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                **kwargs,
            )
        finally:
            if self.log_path is not None:
                log.close()
        self._proc = proc
        self.started_at = time.monotonic()
        return proc

    async def _run(self, spawned: asyncio.Future) -> None:
        delay = self.backoff_initial
        assert self._stop_event is not None
        while not self._stop_event.is_set():
            self._set_state(STARTING)
            try:
                proc = await self._spawn()
            except Exception as e:
                if not spawned.done():
                    spawned.set_exception(e)
                    self._set_state(FAILED)
                    return
                logger.exception("%s: spawn failed", self.name)
                rc = None
            else:
                if not spawned.done():
                    spawned.set_result(None)
                self._set_state(RUNNING)
                mem_task = None
                if self.memory_limit:
                    mem_task = asyncio.create_task(self._memory_watch(proc))
                rc = await proc.wait()
                if mem_task is not None:
                    mem_task.cancel()
                self._kill_group(proc.pid, signal.SIGKILL if os.name == "posix" else None)
                self._close_stdin(proc)
            self.last_exit_code = rc
            if self._stop_event.is_set():
                break
            if rc in self.permanent_exit_codes:
                self._set_state(REFUSED)
                return
            if self.max_restarts is not None and self.restarts >= self.max_restarts:
                self._set_state(FAILED)
                return
            ran = time.monotonic() - (self.started_at or time.monotonic())
            if ran >= self.stable_after:
                delay = self.backoff_initial
            self._set_state(BACKOFF, delay=delay)
            try:
                await asyncio.wait_for(self._stop_event.wait(), delay)
            except asyncio.TimeoutError:
                pass
            delay = min(delay * self.backoff_factor, self.backoff_max)
            self.restarts += 1
        self._set_state(STOPPED)

    async def _memory_watch(self, proc) -> None:
        import psutil

        try:
            root = psutil.Process(proc.pid)
            while proc.returncode is None:
                await asyncio.sleep(self.memory_check_interval)
                try:
                    rss = root.memory_info().rss + sum(
                        c.memory_info().rss for c in root.children(recursive=True)
                    )
                except psutil.Error:
                    continue
                if rss > self.memory_limit:
                    logger.warning(
                        "%s: RSS %d exceeds limit %d; killing", self.name, rss, self.memory_limit
                    )
                    self._set_state(RUNNING, memory_exceeded=rss)
                    self._kill_group(proc.pid, signal.SIGKILL if os.name == "posix" else None)
                    return
        except (psutil.Error, asyncio.CancelledError):
            return

    async def _terminate(self, restart: bool = False) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        if not restart:
            self._set_state(STOPPING)
        self._kill_group(proc.pid, signal.SIGTERM if os.name == "posix" else None)
        try:
            await asyncio.wait_for(proc.wait(), self.stop_timeout)
        except asyncio.TimeoutError:
            logger.warning("%s: did not exit after SIGTERM; killing", self.name)
            self._kill_group(proc.pid, signal.SIGKILL if os.name == "posix" else None)
            await proc.wait()
        # Leftover grandchildren in the group, if any.
        self._kill_group(proc.pid, signal.SIGKILL if os.name == "posix" else None)
        self._close_stdin(proc)

    @staticmethod
    def _close_stdin(proc) -> None:
        try:
            if proc.stdin is not None:
                proc.stdin.close()
        except Exception:
            pass

    def _kill_group(self, pid: int, sig) -> None:
        if os.name == "posix":
            try:
                os.killpg(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        else:  # pragma: no cover - Windows: no groups to signal portably
            proc = self._proc
            if proc is not None and proc.returncode is None:
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass

    def _kill_now(self) -> None:
        """Synchronous best-effort kill (atexit)."""
        proc = self._proc
        if proc is None:
            return
        self._kill_group(proc.pid, signal.SIGTERM if os.name == "posix" else None)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            try:
                os.kill(proc.pid, 0)
            except OSError:
                break
            time.sleep(0.05)
        self._kill_group(proc.pid, signal.SIGKILL if os.name == "posix" else None)


def child_env(extra: dict[str, str] | None = None, drop_python_path: bool = True) -> dict:
    """Environment for a child interpreter: ours minus PYTHONPATH/PYTHONHOME/VIRTUAL_ENV
    (they belong to *this* interpreter, not necessarily to the child's venv) plus ``extra``."""
    env = dict(os.environ)
    if drop_python_path:
        for k in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
            env.pop(k, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


__all__ = ["ProcessSupervisor", "child_env"]
