"""The device's Jupyter kernelspecs, and which of them a worker can run in.

A kernel is *selectable* when it is a Python kernel whose interpreter exists, runs, and is
Python >= 3.10. The version comes from running that interpreter (see :mod:`.python_probe`),
never from the server's own environment. Non-Python kernels are listed with the reason.

``argv[0]`` is resolved the way jupyter_client launches it: a bare ``python``/``python3``/
``pythonX.Y`` means the server's own interpreter (``sys.executable``); other bare names are looked
up on ``PATH``; an ``/usr/bin/env [VAR=val ...] prog`` wrapper is looked through. Symlinks are
*not* followed, since a virtual environment's ``bin/python`` is a symlink to its base interpreter.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from .errors import InterpreterError, UnknownKernelError
from .python_probe import python_version

MIN_PYTHON: tuple[int, int] = (3, 10)


@dataclass(frozen=True)
class KernelInfo:
    """One kernelspec as the environment step sees it (``to_dict`` is the REST/event shape)."""

    name: str
    display_name: str
    language: str
    resource_dir: str
    argv: list[str] = field(default_factory=list)
    interpreter: str | None = None
    python_version: str | None = None
    selectable: bool = False
    reason: str | None = None

    @property
    def id(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.name, **asdict(self)}


def _server_python_names() -> set[str]:
    major, minor = sys.version_info[:2]
    return {"python", f"python{major}", f"python{major}.{minor}"}


def resolve_interpreter(argv: Sequence[str], *, path: str | None = None) -> tuple[str | None, str]:
    """``(absolute path of the program argv runs, "")`` or ``(None, reason)``."""
    if not argv:
        return None, "kernel.json has an empty argv"
    exe, rest = argv[0], list(argv[1:])
    if os.path.basename(exe) == "env" and rest:
        while rest and (rest[0].startswith("-") or "=" in rest[0]):
            rest.pop(0)
        if not rest:
            return None, f"{exe} wraps no program"
        exe = rest[0]
    elif exe in _server_python_names():
        return sys.executable, ""  # jupyter_client substitutes the server's interpreter
    if os.path.isabs(exe):
        return exe, ""
    found = shutil.which(exe, path=path if path is not None else os.environ.get("PATH"))
    if found is None:
        return None, f"'{exe}' not found on PATH"
    return os.path.abspath(found), ""


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


async def describe_kernel(
    name: str,
    spec: Any,
    *,
    path: str | None = None,
    probe_timeout: float = 15.0,
    min_python: tuple[int, int] = MIN_PYTHON,
) -> KernelInfo:
    """Build a :class:`KernelInfo` for one ``jupyter_client`` KernelSpec, probing its Python."""
    argv = [str(a) for a in (spec.argv or [])]
    language = str(spec.language or "")
    base = {
        "name": name,
        "display_name": str(spec.display_name or name),
        "language": language,
        "resource_dir": str(spec.resource_dir or ""),
        "argv": argv,
    }
    interpreter, why = resolve_interpreter(argv, path=path)
    if language.strip().lower() != "python":
        return KernelInfo(
            **base,
            interpreter=interpreter,
            reason=f"not a Python kernel (language: {language or 'unknown'}); "
            "workers run Python",
        )
    if interpreter is None:
        return KernelInfo(**base, reason=f"interpreter missing: {why}")
    if not os.path.exists(interpreter):
        return KernelInfo(**base, interpreter=interpreter,
                          reason=f"interpreter missing: {interpreter} does not exist")
    try:
        info = await python_version(interpreter, timeout=probe_timeout)
    except InterpreterError as exc:
        return KernelInfo(**base, interpreter=interpreter,
                          reason=f"interpreter not runnable: {exc.reason}")
    version = info["version"]
    if _parse_version(version)[:2] < min_python:
        need = ".".join(map(str, min_python))
        return KernelInfo(**base, interpreter=interpreter, python_version=version,
                          reason=f"Python {version} is older than {need}")
    return KernelInfo(**base, interpreter=interpreter, python_version=version, selectable=True)


def _load_specs(kernel_dirs: Sequence[str] | None) -> list[tuple[str, Any, str | None]]:
    """``(name, spec or None, error)`` for every kernelspec directory (blocking file IO)."""
    if kernel_dirs is not None:
        ksm = KernelSpecManager(kernel_dirs=list(kernel_dirs))
    else:  # a fresh manager reads JUPYTER_PATH / JUPYTER_DATA_DIR as they are now
        ksm = KernelSpecManager()
    out: list[tuple[str, Any, str | None]] = []
    for name, resource_dir in sorted(ksm.find_kernel_specs().items()):
        try:
            out.append((name, ksm.get_kernel_spec(name), None))
        except Exception as exc:  # a broken kernel.json is listed, not fatal
            out.append((name, resource_dir, f"kernel.json unreadable: {exc}"))
    return out


async def list_kernels(
    *,
    kernel_dirs: Sequence[str] | None = None,
    path: str | None = None,
    probe_timeout: float = 15.0,
    min_python: tuple[int, int] = MIN_PYTHON,
    concurrency: int = 4,
) -> list[KernelInfo]:
    """Every kernelspec on this device, probed (uncached; see :class:`KernelCatalog`)."""
    specs = await asyncio.to_thread(_load_specs, kernel_dirs)
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str, spec: Any, error: str | None) -> KernelInfo:
        if error is not None:
            return KernelInfo(name=name, display_name=name, language="", resource_dir=str(spec),
                              reason=error)
        async with gate:
            return await describe_kernel(name, spec, path=path, probe_timeout=probe_timeout,
                                         min_python=min_python)

    return list(await asyncio.gather(*(one(*s) for s in specs)))


class KernelCatalog:
    """Cached :func:`list_kernels`: concurrent callers share one probe; ``refresh`` re-probes.

    ``max_age`` (seconds, ``None`` = forever) bounds how stale a cached list may be.
    """

    def __init__(
        self,
        *,
        kernel_dirs: Sequence[str] | None = None,
        path: str | None = None,
        probe_timeout: float = 15.0,
        min_python: tuple[int, int] = MIN_PYTHON,
        max_age: float | None = 300.0,
    ) -> None:
        self._kwargs: dict[str, Any] = {
            "kernel_dirs": kernel_dirs,
            "path": path,
            "probe_timeout": probe_timeout,
            "min_python": min_python,
        }
        self.max_age = max_age
        self._cached: list[KernelInfo] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._cached = None

    def _fresh(self) -> bool:
        if self._cached is None:
            return False
        return self.max_age is None or time.monotonic() - self._at < self.max_age

    async def kernels(self, *, refresh: bool = False) -> list[KernelInfo]:
        if refresh:
            self.invalidate()
        async with self._lock:
            if not self._fresh():
                self._cached = await list_kernels(**self._kwargs)
                self._at = time.monotonic()
            assert self._cached is not None
            return list(self._cached)

    async def get(self, name: str, *, refresh: bool = False) -> KernelInfo:
        """The kernel called ``name``; one forced refresh before :class:`UnknownKernelError`."""
        for force in (refresh, True):
            for info in await self.kernels(refresh=force):
                if info.name == name:
                    return info
            if force:
                break
        raise UnknownKernelError(f"no kernelspec named {name!r} on this device")
