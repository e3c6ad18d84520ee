"""``parallalx launch script.py [args]``: a script as ``__main__`` on every rank, torchrun-style.

The script (and, with ``--working-dir DIR``, the directory it lives in, as Ray's
``working_dir``) travels inside the launched job as a zip archive: size-capped
(:data:`MAX_WORKDIR_BYTES`), without :data:`EXCLUDE`'s patterns (``.git``, ``__pycache__``,
``*.pyc``, ...), named by a hash of its content. Each worker unpacks it once into
``<tmp>/parallalx-workdirs/<hash>`` (atomically: a unique temporary directory renamed into
place) and reuses it for every rank and attempt with the same content. The rank runs the
script with that directory as its working directory and first on ``sys.path`` (so the
script's own modules import), ``sys.argv = [script, *args]`` and ``__name__ == "__main__"``:
what ``torchrun script.py args`` does, with the torch process group already formed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the largest working directory shipped (bytes, before compression)
MAX_WORKDIR_BYTES = 100 * 1024 * 1024

#: names (files or directories, at any depth) never shipped
EXCLUDE = (".git", ".hg", ".svn", "__pycache__", "*.pyc", "*.pyo", ".ipynb_checkpoints",
           ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".DS_Store")

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class ScriptError(ValueError):
    """The script or working directory cannot be launched (one line)."""


def _excluded(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def pack_directory(root: Path, cap: int = MAX_WORKDIR_BYTES,
                   exclude: tuple[str, ...] = EXCLUDE) -> tuple[bytes, str]:
    """``(zip bytes, content hash)`` of ``root``'s files, refused (``ScriptError``) over
    ``cap`` bytes before anything is read."""
    files: list[tuple[str, Path]] = []
    total = 0
    for here, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _excluded(d, exclude))
        for name in sorted(names):
            if _excluded(name, exclude):
                continue
            path = Path(here) / name
            if not path.is_file():
                continue
            total += path.stat().st_size
            if total > cap:
                raise ScriptError(
                    f"working directory {root} holds more than {cap // (1024 * 1024)} MB to ship "
                    f"(without {', '.join(exclude[:4])}, ...); launch from a smaller directory "
                    "or keep data sets out of it (each device reads them itself)"
                )
            files.append((path.relative_to(root).as_posix(), path))
    return _zip(files)


def _zip(files: list[tuple[str, Path]]) -> tuple[bytes, str]:
    """The files as a zip (one fixed date: equal content, equal archive) and a content hash."""
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for rel, path in files:
            data = path.read_bytes()
            digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
            info = zipfile.ZipInfo(rel, _FIXED_TIME)
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue(), digest.hexdigest()[:32]


def workdir_cache() -> Path:
    """Where a worker keeps unpacked working directories (one per content hash)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "parallalx-workdirs"


def unpack_directory(archive: bytes, digest: str) -> Path:
    """The unpacked directory of ``digest`` on this machine, unpacking it the first time."""
    import shutil
    import tempfile

    cache = workdir_cache()
    target = cache / digest
    if target.is_dir():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=cache))
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        zf.extractall(tmp)
    try:
        os.rename(tmp, target)
    except OSError:  # another rank of this machine was first: same content
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@dataclass
class ScriptRun:
    """The function ``launch`` runs for a script: picklable by reference (it is parallalx's),
    carrying the script's path inside the archive, its arguments and the archive."""

    script: str
    argv: list[str]
    archive: bytes = field(repr=False)
    digest: str

    @property
    def label(self) -> str:
        return self.script

    def __call__(self) -> Any:
        import runpy
        import sys

        root = unpack_directory(self.archive, self.digest)
        os.chdir(root)
        sys.path.insert(0, str(root))
        sys.argv = [self.script, *self.argv]
        runpy.run_path(str(root / self.script), run_name="__main__")
        return None


def script_run(script: str | os.PathLike[str], argv: list[str],
               working_dir: str | os.PathLike[str] | None = None,
               cap: int = MAX_WORKDIR_BYTES) -> ScriptRun:
    """A :class:`ScriptRun` for ``script`` (with ``working_dir`` shipped, or the script
    alone); ``ScriptError`` with one line for a missing script or directory, a script outside
    the directory, or a directory over ``cap``."""
    path = Path(script).expanduser()
    if not path.is_file():
        raise ScriptError(f"no such script: {script}")
    if working_dir is None:
        archive, digest = _zip([(path.name, path)])
        return ScriptRun(path.name, list(argv), archive, digest)
    root = Path(working_dir).expanduser().resolve()
    if not root.is_dir():
        raise ScriptError(f"no such working directory: {working_dir}")
    try:
        rel = path.resolve().relative_to(root).as_posix()
    except ValueError:
        raise ScriptError(f"the script {script} is not inside the working directory "
                          f"{working_dir}") from None
    archive, digest = pack_directory(root, cap)
    return ScriptRun(rel, list(argv), archive, digest)


def launch_params(fn: ScriptRun, args: Any) -> dict[str, Any]:
    """The launch workload's parameters from the `launch` command's arguments (the CLI's and
    the magic's, which share them: ``commands.py``)."""
    return {
        "fn": fn, "args": (), "kwargs": {},
        "workers": [w for w in (args.workers or "").split(",") if w] or None,
        "checkpoint_dir": args.checkpoint_dir, "max_restarts": args.max_restarts,
        "group_timeout": args.group_timeout, "requirements": args.requirements,
    }


__all__ = ["EXCLUDE", "MAX_WORKDIR_BYTES", "ScriptError", "ScriptRun", "launch_params",
           "pack_directory", "script_run", "unpack_directory"]
