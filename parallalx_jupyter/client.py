"""Finding the local Jupyter server that runs parallalx and calling its REST API.

The extension writes `<home>/server.json` (URL, token, pid; mode 0600) when it starts. Several
devices on one host each have their own home, so `--home` picks the device. Kernels first look for
the Jupyter server they belong to (`parallalx_jupyter.notebook.api`) and fall back to this.

`ApiClient` is the one HTTP code path of the CLI and the notebook surface (magics, widgets): JSON
in and out, errors as `ClientError` with the server's `{"error": ...}` message and HTTP status.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir

API_PREFIX = "parallalx/api/"


class ServerNotFound(Exception):
    """No running parallalx-enabled Jupyter server could be found."""


class ClientError(Exception):
    """A REST call failed: `status` is the HTTP status, or None when the server was unreachable.

    `str(err)` is one readable line: the server's message and `(HTTP <status>)`."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(f"{message} (HTTP {status})" if status is not None else message)
        self.message = message
        self.status = status


class ApiClient:
    """Calls a Jupyter server's REST API with its token (header, never the URL)."""

    def __init__(self, url: str, token: str = "", timeout: float = 30.0) -> None:
        self.url = url.rstrip("/") + "/"
        self.token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the token
        return f"ApiClient({self.url!r})"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}", "Content-Type": "application/json"}

    def ws_url(self, path: str) -> str:
        """`ws(s)://` URL of a server-relative path, e.g. `api/events/subscribe`."""
        base = "ws" + self.url[len("http"):] if self.url.startswith("http") else self.url
        return base + path.lstrip("/")

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        """`method` on a server-relative `path` (e.g. `api/kernels`); the decoded JSON answer."""
        request = urllib.request.Request(
            self.url + path.lstrip("/"),
            data=None if body is None and method == "GET" else json.dumps(body or {}).encode(),
            method=method,
            headers=self.headers,
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            try:
                message = json.loads(err.read()).get("error", err.reason)
            except (ValueError, AttributeError):
                message = err.reason
            raise ClientError(str(message), err.code) from None
        except urllib.error.URLError as err:
            raise ClientError(
                f"cannot reach the Jupyter server at {self.url}: {err.reason}"
            ) from None
        except (OSError, ValueError) as err:  # timeouts, resets, a non-JSON answer
            raise ClientError(
                f"cannot reach the Jupyter server at {self.url}: {err or type(err).__name__}"
            ) from None

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """`method` on `<url>/parallalx/api/<path>`: the parallalx REST API."""
        return self.request(method, API_PREFIX + path.lstrip("/"), body, timeout)


def match_device(devices: list[dict[str, Any]], ref: str) -> dict[str, Any]:
    """The one paired device that `ref` (a device ID, a unique prefix of it, or a name) names;
    ValueError with a readable message otherwise."""
    if not ref.strip():
        raise ValueError("give a device ID (or a unique prefix of it) or a name")
    target = ref.replace("-", "").upper()
    matches = [d for d in devices if d["id"].startswith(target) or d["name"] == ref]
    if not matches and len(target) >= 52:
        matches = [d for d in devices if d["id"] == target[:52]]
    if len(matches) != 1:
        raise ValueError(
            f"no paired device matches {ref!r}" if not matches
            else f"{ref!r} matches {len(matches)} devices; give more of the ID"
        )
    return matches[0]


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
