"""Files on disk: writing secrets (keys, certificates, tokens, state files), creating a file
exactly once, and the lock that gives a state directory to one process at a time."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Atomically write `data` to `path` with mode 0600: the temp file is created 0600 in the
    same directory, fsynced, then renamed, so a reader never sees a partial or wider-open file
    and a crash leaves either the old or the new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _private_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.chmod(path, 0o600)


def _private_temp(path: Path, data: bytes | str) -> str:
    """A 0600 temp file beside `path` holding `data`, fsynced: the complete content that a
    rename or a link then makes appear under `path` at once."""
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def create_private_exclusive(path: str | os.PathLike[str], data: bytes | str) -> bool:
    """Create `path` holding `data` (mode 0600) only if no file has that name yet; return False,
    touching nothing, when one has.

    For files that must be made once and never replaced, like the device key: two processes
    starting on a fresh home at the same moment must end with one key, not with each holding
    the key it generated while the last writer's stays on disk. The data goes to a 0600 temp
    file first (fsynced), which is then hard-linked to `path`: link(2) fails when the name
    exists, and the name only ever appears with its complete content, so a process that lost
    the race never reads half a key. Where the filesystem has no hard links, it falls back to
    `os.open(O_CREAT | O_EXCL)`, just as exclusive, but a loser may briefly see the file still
    being written (`identity` retries its read then)."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    tmp = _private_temp(path, data)
    try:
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                                 errno.EXDEV, errno.ENOSYS):
                raise
            return _create_exclusive_without_links(path, data)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _create_exclusive_without_links(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True


class LockHeld(Exception):
    """Another open file (in this process or any other) holds the lock on `path`."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is locked by another process")
        self.path = path


class FileLock:
    """An exclusive `flock(2)` on a file, held until `release()` or until the process ends.

    The kernel drops the lock when its holder dies, SIGKILL included, so a crash never leaves a
    stale lock that someone must clean up (a PID file would, and PIDs get reused). The lock
    belongs to this open file: other processes and a second `acquire` in this one are refused
    alike. Python opens files non-inheritable, so kernels and jobs started by the holder do not
    keep the lock alive after it exits. The file itself is never deleted: unlinking a lock file
    lets the next process lock a new file under the same name while the old one is still held.
    The holder can describe itself in the file (`describe`) for the message a refused process
    shows; that is written in place through the locked descriptor, never by rename, which would
    move the name to a file nobody has locked.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: str | os.PathLike[str]) -> FileLock:
        """Take the lock without waiting: `LockHeld` if it is taken, `OSError` if the file
        cannot be opened or created."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(path) from None
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def describe(self, info: dict[str, Any]) -> None:
        """Replace the file's content with `info` as JSON (pid, port: no secrets, it is read by
        whoever is refused)."""
        if self._fd is None:
            raise RuntimeError(f"{self.path} is not held")
        data = json.dumps(info).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))

    def release(self) -> None:
        """Close the file, which drops the lock; the file stays (see the class docstring)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def read_lock_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What the holder of the lock on `path` wrote with `FileLock.describe`; {} when nothing
    (yet) or not readable, e.g. half-written at the moment of reading."""
    try:
        info = json.loads(Path(path).read_bytes() or b"{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}
