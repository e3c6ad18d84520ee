"""Writing secrets to disk: one helper for keys, certificates, tokens and state files."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_private(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Atomically write `data` to `path` with mode 0600: the temp file is created 0600 in the
    same directory, fsynced, then renamed, so a reader never sees a partial or wider-open file
    and a crash leaves either the old or the new content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.chmod(path, 0o600)
