"""Finding the local Jupyter server that runs parallalx, for the CLI and (later) kernels.

The extension writes `<home>/server.json` (URL, token, pid; mode 0600) when it starts. Several
devices on one host each have their own home, so `--home` picks the device.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir


class ServerNotFound(Exception):
    """No running parallalx-enabled Jupyter server could be found."""


def default_home() -> Path:
    env = os.environ.get("PARALLALX_HOME")
    return Path(env).expanduser() if env else Path(jupyter_data_dir()) / "parallalx"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_server(
    url: str | None = None, token: str | None = None, home: Path | None = None
) -> tuple[str, str]:
    """(url, token) of the server to talk to."""
    if url:
        return url, token or ""
    home = home or default_home()
    path = home / "server.json"
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise ServerNotFound(
            f"no running Jupyter server with parallalx found for {home} (start `jupyter lab`, "
            "or pass --url and --token)"
        ) from None
    except (OSError, ValueError) as err:
        raise ServerNotFound(f"cannot read {path}: {err}") from None
    pid = info.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        raise ServerNotFound(f"the Jupyter server recorded in {path} (pid {pid}) is not running")
    return str(info["url"]), str(token or info.get("token") or "")
