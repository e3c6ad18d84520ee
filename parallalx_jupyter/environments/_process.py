"""Run a child process without blocking the event loop: a deadline, output capture, clean kill.

Every probe of another interpreter or executable goes through here, so the rules are in one
place: the child gets its own process group (so a timeout also ends what it started, e.g. pip's
build backends), it runs from a neutral directory, and variables that would pin *this* server's
interpreter onto a different one (``PYTHONHOME``, ``PYTHONEXECUTABLE``, ``__PYVENV_LAUNCHER__``)
are dropped. Everything else, the user's ``PIP_*`` settings included, passes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: Variables that describe the server's own interpreter and would mislead another one.
_FOREIGN_PYTHON_VARS = ("PYTHONHOME", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")
#: pip and some tools print very long lines; asyncio's default 64 KiB line limit is too small.
STREAM_LIMIT = 1024 * 1024


class ProcessTimeout(TimeoutError):
    """The child ran past its deadline and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float) -> None:
        super().__init__(f"{argv[0]} did not finish within {timeout:g} s")
        self.argv = list(argv)
        self.timeout = timeout


@dataclass(frozen=True)
class ProcessResult:
    returncode: int
    stdout: str
    stderr: str


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment minus interpreter-pinning variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_PYTHON_VARS}
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


async def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    merge_stderr: bool = False,
) -> asyncio.subprocess.Process:
    """Start ``argv`` in its own process group with piped output (stdin closed)."""
    kwargs: dict = {}
    if sys.platform == "win32":
        kwargs["creationflags"] = 0x00000200  # CREATE_NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        cwd=tempfile.gettempdir(),
        env=child_env(env),
        limit=STREAM_LIMIT,
        **kwargs,
    )


async def kill(proc: asyncio.subprocess.Process, grace: float = 3.0) -> None:
    """Terminate the child's whole process group, then kill it if it does not exit in time."""
    if proc.returncode is not None:
        return

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
            if sys.platform == "win32":
                proc.kill()
            else:
                os.killpg(proc.pid, sig)

    send(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except asyncio.TimeoutError:
        send(signal.SIGKILL if sys.platform != "win32" else signal.SIGTERM)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)


async def run_process(
    argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
) -> ProcessResult:
    """Run ``argv`` to completion and capture its output.

    Raises :class:`ProcessTimeout` past ``timeout`` seconds (the child is killed), and lets
    ``OSError`` (missing or non-executable file) propagate. Cancelling the caller kills the child.
    """
    proc = await spawn(argv, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        await kill(proc)
        raise ProcessTimeout(argv, timeout) from None
    except BaseException:
        await asyncio.shield(kill(proc))
        raise
    assert proc.returncode is not None
    return ProcessResult(
        proc.returncode,
        out.decode("utf-8", "replace"),
        (err or b"").decode("utf-8", "replace"),
    )
