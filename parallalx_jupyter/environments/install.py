"""Install what an environment lacks with *that* interpreter's pip, streaming progress.

``<python> -m pip install --progress-bar off --no-input <requirements>``: no index options are
passed, so pip reads the user's own configuration (pip.conf, ``PIP_*`` variables, constraints).
``find_links``/``no_index`` are the only additions, for wheelhouses and offline devices.

Progress comes as :class:`~.pip_progress.InstallEvent` dicts, either by iterating
:meth:`Installer.events` or through a callback to :meth:`Installer.run`. Every requested package
ends with ``done`` or ``failed``. After pip succeeds the environment is inspected again and the
run fails unless every requested package now satisfies its requirement. One pip at a time per
interpreter.
"""

from __future__ import annotations

import asyncio
import inspect as _inspect
import os
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ._process import kill, spawn
from .errors import InstallCancelled, InstallError, InstallTimeout
from .pip_progress import InstallEvent, PipOutputParser
from .requirements import DiffEntry, diff, inspect_environment, pending

EventCallback = Callable[[InstallEvent], Any]

_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def _env_lock(python: str) -> asyncio.Lock:
    per_loop = _LOCKS.setdefault(asyncio.get_running_loop(), {})
    return per_loop.setdefault(os.path.realpath(python), asyncio.Lock())


@dataclass
class InstallResult:
    python: str
    requirements: list[str]
    #: installed versions of the requested packages after the install
    installed: dict[str, str | None] = field(default_factory=dict)
    #: the verification diff (all ``ok``)
    diff: list[DiffEntry] = field(default_factory=list)
    output_tail: list[str] = field(default_factory=list)


def _as_requirement(item: str | Requirement | Mapping[str, Any]) -> Requirement:
    if isinstance(item, Requirement):
        return item
    if isinstance(item, Mapping):  # a DiffEntry
        return Requirement(str(item["requirement"]))
    return Requirement(str(item))


class Installer:
    """One ``pip install`` run into ``python``'s environment."""

    def __init__(
        self,
        python: str,
        requirements: Sequence[str | Requirement | DiffEntry],
        *,
        find_links: Sequence[str] = (),
        no_index: bool = False,
        timeout: float = 1800.0,
        verify: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.python = python
        self.requirements = [_as_requirement(r) for r in requirements]
        self.find_links = [str(f) for f in find_links]
        self.no_index = no_index
        self.timeout = timeout
        self.verify = verify
        self.env = dict(env or {})
        self.result: InstallResult | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._cancelled = False
        self._kill_task: asyncio.Task[None] | None = None

    @property
    def packages(self) -> list[str]:
        return [canonicalize_name(r.name) for r in self.requirements]

    def command(self) -> list[str]:
        cmd = [self.python, "-m", "pip", "install", "--progress-bar", "off", "--no-input",
               "--disable-pip-version-check"]
        for link in self.find_links:
            cmd += ["--find-links", link]
        if self.no_index:
            cmd.append("--no-index")
        return cmd + [str(r) for r in self.requirements]

    def cancel(self) -> None:
        """Stop pip (from the event loop's thread); the run raises :class:`InstallCancelled`."""
        self._cancelled = True
        if self._proc is not None and self._proc.returncode is None and self._kill_task is None:
            self._kill_task = asyncio.get_running_loop().create_task(kill(self._proc))

    async def run(self, on_event: EventCallback | None = None) -> InstallResult:
        """Run to the end, passing each event to ``on_event`` (sync or async)."""
        async for event in self.events():
            if on_event is not None:
                maybe = on_event(event)
                if _inspect.isawaitable(maybe):
                    await maybe
        assert self.result is not None
        return self.result

    async def events(self) -> AsyncIterator[InstallEvent]:
        """Progress events; raises :class:`InstallError` (or a subclass) at the end on failure."""
        if not self.requirements:
            self.result = InstallResult(self.python, [])
            return
        if not os.path.isfile(self.python):
            raise InstallError(f"{self.python}: interpreter not found", packages=self.packages)
        async with _env_lock(self.python), aclosing(self._events()) as stream:
            async for event in stream:
                yield event

    async def _events(self) -> AsyncIterator[InstallEvent]:
        parser = PipOutputParser()
        tail: deque[str] = deque(maxlen=40)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        if self._cancelled:
            raise InstallCancelled(f"installing {', '.join(self.packages)}: cancelled before start",
                                   packages=self.packages)
        proc = self._proc = await spawn(self.command(), env=self.env, merge_stderr=True)
        assert proc.stdout is not None
        timed_out = False
        try:
            while True:
                remaining = deadline - loop.time()
                try:
                    raw = await asyncio.wait_for(proc.stdout.readline(), max(remaining, 0.001))
                except asyncio.TimeoutError:
                    timed_out = True
                    await kill(proc)
                    break
                if not raw:
                    break
                line = raw.decode("utf-8", "replace").rstrip()
                if line.strip():
                    tail.append(line)
                for event in parser.feed(line):
                    yield event
            await proc.wait()
        finally:
            if proc.returncode is None:  # consumer stopped early or the task was cancelled
                await asyncio.shield(kill(proc))
            if self._kill_task is not None:
                await asyncio.shield(self._kill_task)
        output = list(tail)

        if timed_out or self._cancelled:
            why = (f"pip did not finish within {self.timeout:g} s" if timed_out
                   else "the install was cancelled")
            for pkg in self.packages:
                if pkg not in parser.done:
                    yield {"package": pkg, "phase": "failed", "message": why}
            cls = InstallTimeout if timed_out else InstallCancelled
            raise cls(f"installing {', '.join(self.packages)} into {self.python}: {why}",
                      packages=self.packages, pip_error=parser.last_error, output=output)

        if proc.returncode != 0:
            error = self._pip_failed(parser, output, proc.returncode)
            for pkg in self.packages:  # pip installs all or nothing: the rest did not go in
                if pkg not in parser.failed and pkg not in parser.done:
                    yield {"package": pkg, "phase": "failed",
                           "message": f"not installed: installing {', '.join(error.packages)} "
                                      "failed"}
            raise error

        installed: dict[str, str | None] = {}
        entries: list[DiffEntry] = []
        if self.verify:
            try:
                env = await inspect_environment(self.python, self.packages)
            except Exception as exc:
                raise InstallError(f"pip finished but {self.python} could not be inspected: "
                                   f"{exc}", packages=self.packages, output=output) from exc
            installed = env.packages
            entries = diff(self.requirements, installed, markers=env.markers)
            wrong = pending(entries)
            if wrong:
                for e in wrong:
                    yield {"package": e["name"], "phase": "failed",
                           "message": f"after pip: {e['name']} is {e['installed'] or 'absent'}, "
                                      f"required {e['required'] or 'any version'}"}
                listing = ", ".join(f"{e['name']} is {e['installed'] or 'absent'} "
                                    f"(required {e['required'] or 'any'})" for e in wrong)
                raise InstallError(f"pip finished but {listing}",
                                   packages=[e["name"] for e in wrong],
                                   pip_error=parser.last_error, output=output)
        for pkg in self.packages:
            if pkg not in parser.done:
                version = installed.get(pkg)
                yield {"package": pkg, "phase": "done",
                       "message": f"{pkg} {version} verified" if version else f"{pkg} done"}
        self.result = InstallResult(self.python, [str(r) for r in self.requirements],
                                    installed, entries, output)

    def _pip_failed(self, parser: PipOutputParser, output: list[str], rc: int) -> InstallError:
        last = parser.last_error or (output[-1] if output else f"pip exited with status {rc}")
        if any("No module named pip" in line for line in output):
            last = f"pip is not available in this environment (try `{self.python} -m ensurepip`)"
        named = parser.failed or self.packages
        return InstallError(
            f"installing {', '.join(named)} into {self.python} failed: {last}",
            packages=list(named), pip_error=last, output=output,
        )


async def install(
    python: str,
    requirements: Sequence[str | Requirement | DiffEntry],
    *,
    on_event: EventCallback | None = None,
    find_links: Sequence[str] = (),
    no_index: bool = False,
    timeout: float = 1800.0,
) -> InstallResult:
    """Install ``requirements`` into ``python``'s environment and verify them."""
    installer = Installer(python, requirements, find_links=find_links, no_index=no_index,
                          timeout=timeout)
    return await installer.run(on_event)


async def ensure(
    python: str,
    required: Sequence[str | Requirement],
    *,
    on_event: EventCallback | None = None,
    find_links: Sequence[str] = (),
    no_index: bool = False,
    timeout: float = 1800.0,
) -> list[DiffEntry]:
    """Inspect, diff, install what is missing or mismatched, and return the final (all-``ok``)
    diff. Raises :class:`InstallError` and leaves the decision to start a worker to the caller."""
    reqs = [_as_requirement(r) for r in required]
    env = await inspect_environment(python, [r.name for r in reqs])
    todo = pending(diff(reqs, env.packages, markers=env.markers))
    if todo:
        await install(python, todo, on_event=on_event, find_links=find_links,
                      no_index=no_index, timeout=timeout)
        env = await inspect_environment(python, [r.name for r in reqs])
    return diff(reqs, env.packages, markers=env.markers)
