"""Finding the local Jupyter server that runs parallalx and calling its REST API.

The extension writes `<home>/server.json` (URL, token, pid; mode 0600) when it starts. Several
devices on one host each have their own home, so `--home` picks the device (`find_server`).

`locate_server` is how a kernel, or any process running a job (`jobs.reporter`), finds its
device's server; first match wins:

1. explicit `url`/`token` arguments (`notebook.connect(url=..., token=...)`);
2. the Jupyter server this kernel belongs to (`find_kernel_server`): the kernel's connection file
   names its kernel ID and sits in the server's runtime dir; among the `jpserver-*.json` files
   there (those `jupyter_server.serverapp.list_running_servers()` reads; read here directly
   because importing `jupyter_server.serverapp` costs ~2.5 s in a kernel, and read-only, without
   deleting stale files), the server whose pid is `JPY_PARENT_PID`/our parent is tried first and
   the one that lists our kernel ID under `/api/kernels/<id>` is ours, if it runs parallalx (a
   server that does not answer in time is not ruled out: our parent that is slow to answer, or
   ours that is slow to say whether it runs parallalx, is still ours);
3. `PARALLALX_URL` / `PARALLALX_TOKEN` from the environment;
4. `<home>/server.json` written by the extension (`find_server`; `PARALLALX_HOME`).

A parallalx server puts its own `PARALLALX_HOME`, `PARALLALX_URL` and `PARALLALX_TOKEN` into
the environment of every kernel it starts (`app.pass_env_to_kernels`), so in its kernels 3 and
4 name that server too, and `default_home()` (the cluster dir behind `px.train`) is its home
even where that is set in a config file only.

`ApiClient` is the one HTTP code path to the REST API: the CLI and the magics (through the
command table, `commands`), the widgets, a job's reporter and `local_device` use it. JSON in and
out, one method per route, errors as `ClientError` with the server's `{"error": ...}` message and
HTTP status (None when the server could not be reached).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import settings

API_PREFIX = "parallalx/api/"
# Prefix of every parallalx event schema ID: `server.events` registers the schemas, kernels
# (`notebook.api.EventStream`) keep the events whose schema ID starts with it.
SCHEMA_BASE = "https://events.parallalx.dev/parallalx_jupyter"


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
        try:
            request = urllib.request.Request(
                self.url + path.lstrip("/"),
                data=None if body is None and method == "GET" else json.dumps(body or {}).encode(),
                method=method,
                headers=self.headers,
            )
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
        except (OSError, ValueError, http.client.HTTPException) as err:
            # timeouts, resets, a non-JSON answer, a URL urllib cannot use
            raise ClientError(
                f"cannot reach the Jupyter server at {self.url}: {err or type(err).__name__}"
            ) from None

    def call(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        """`method` on `<url>/parallalx/api/<path>`: the parallalx REST API."""
        return self.request(method, API_PREFIX + path.lstrip("/"), body, timeout)

    # -- the parallalx REST API, one method per route (the CLI, the magics, the widgets)

    def device(self, refresh: bool = False) -> dict[str, Any]:
        return self.call("GET", "device" + ("?refresh=true" if refresh else ""))

    def requests(self, state: str = "open", direction: str | None = None) -> list[dict[str, Any]]:
        query = {"state": state, **({"direction": direction} if direction else {})}
        return self.call("GET", "requests?" + urllib.parse.urlencode(query))

    def get_request(self, request_id: str) -> dict[str, Any]:
        return self.call("GET", f"requests/{_q(request_id)}")

    def accept(
        self, request_id: str, kernel: str | None = None, ide: str | None = None
    ) -> dict[str, Any]:
        body = {k: v for k, v in (("kernel", kernel), ("ide", ide)) if v}
        return self.call("POST", f"requests/{_q(request_id)}/accept", body)

    def reject(self, request_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.call("POST", f"requests/{_q(request_id)}/reject",
                         {"reason": reason} if reason else {})

    def devices(self) -> list[dict[str, Any]]:
        return self.call("GET", "devices")

    def revoke(self, device: str) -> dict[str, Any]:
        """Revoke a paired device given its ID, a unique ID prefix or its name."""
        try:
            target = match_device(self.devices(), device)
        except ValueError as err:
            raise ClientError(str(err)) from None
        return self.call("POST", f"devices/{_q(target['id'])}/revoke")

    def invite(self, url: str, *, offer: bool = False, **asks: Any) -> dict[str, Any]:
        """Send a connection request to the peer listener at `url` (`offer=True`: offer this
        device as a worker instead). `asks`: purpose, nthreads, memory_limit_gb, gpus,
        duration_hours, requirements. Returns our outgoing request with the verification code."""
        asks = {k: v for k, v in asks.items() if v is not None}
        return self.call("POST", "invitations",
                         {"url": url, "kind": "offer" if offer else "invite", "asks": asks})

    def nearby(self) -> list[dict[str, Any]]:
        """Devices announcing themselves on the local network (unverified: see `invite`)."""
        return self.call("GET", "nearby")

    def cluster(
        self, action: str = "show", *, nthreads: int = 1, kernel: str | None = None
    ) -> dict[str, Any]:
        """`show` this device's cluster, or `start`, `stop` it, or `add-self` (a local worker
        of `nthreads` threads, in `kernel`); the cluster's state."""
        if action == "show":
            return self.call("GET", "cluster")
        if action == "add-self":
            body: dict[str, Any] = {"nthreads": nthreads}
            if kernel:
                body["kernel"] = kernel
            return self.call("POST", "cluster/add-self", body)
        return self.call("POST", f"cluster/{_q(action)}")

    def retry_join(self, main_id: str) -> dict[str, Any]:
        """Join the main device `main_id` again now (a refused or failed join)."""
        return self.call("POST", f"cluster/serving/{_q(main_id)}/retry")

    def kernels(self, refresh: bool = False) -> list[dict[str, Any]]:
        return self.call("GET", "kernels" + ("?refresh=true" if refresh else ""))

    def ides(self) -> list[dict[str, Any]]:
        return self.call("GET", "ides")

    def environment(
        self, action: str, requirements: list[str] | tuple[str, ...] = (),
        kernel: str | None = None, ide: str | None = None,
    ) -> dict[str, Any]:
        """`check` or `install` what an environment (a kernel, an IDE's Python, else the
        server's) needs for the cluster plus `requirements`."""
        body: dict[str, Any] = {"requirements": list(requirements)}
        if kernel:
            body["kernel"] = kernel
        if ide:
            body["ide"] = ide
        return self.call("POST", f"environment/{_q(action)}", body)

    def workloads(self) -> list[dict[str, Any]]:
        return self.call("GET", "workloads")

    def jobs(self) -> list[dict[str, Any]]:
        return self.call("GET", "jobs")

    def job(self, job_id: str) -> dict[str, Any]:
        """One job, with the lines its ranks printed (``output``)."""
        return self.call("GET", f"jobs/{_q(job_id)}")

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self.call("POST", f"jobs/{_q(job_id)}/cancel")

    def remove_job(self, job_id: str) -> None:
        self.call("DELETE", f"jobs/{_q(job_id)}")


def _q(value: str) -> str:
    """An ID as one URL path segment."""
    return urllib.parse.quote(value, safe="")


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
    """The app's `home` without config: PARALLALX_HOME, else the settings table's default."""
    return Path(settings.resolve("home")).expanduser()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_url(url: str, source: str = "the server URL") -> str:
    """`url` if it can name a Jupyter server, else ServerNotFound in one line that names where
    it came from (`--url`, `PARALLALX_URL`, a server.json): urllib would otherwise fail deep in
    the first request, with a traceback that names neither."""
    problem = "" if url.isprintable() and not any(ch.isspace() for ch in url) else (
        "it holds a space or a control character")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as err:
        problem = problem or str(err)
    else:
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problem = problem or "no http:// or https:// scheme and host"
    if problem:
        raise ServerNotFound(
            f"{source} {url!r} is not a valid server URL ({problem}); give it as "
            "http://host:port, e.g. http://127.0.0.1:8888"
        )
    return url


def find_server(
    url: str | None = None, token: str | None = None, home: Path | None = None,
    source: str = "the server URL",
) -> tuple[str, str]:
    """(url, token) of the server to talk to (`source`: where `url` came from, for the
    message when it is no URL)."""
    if url:
        return check_url(url, source), token or ""
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
    # the extension writes an object with a URL; anything else (edited by hand, another
    # program's file) is as unreadable as broken JSON
    if not isinstance(info, dict) or not isinstance(info.get("url"), str) or not info["url"]:
        raise ServerNotFound(f"cannot read {path}: it records no server URL (restart the "
                             "Jupyter server to write it again, or pass --url and --token)")
    pid = info.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        raise ServerNotFound(f"the Jupyter server recorded in {path} (pid {pid}) is not running")
    return check_url(info["url"], f"the URL in {path}"), str(token or info.get("token") or "")


# ------------------------------------------------------------------------ from a kernel or a job


@dataclass(frozen=True)
class ServerRef:
    url: str
    token: str
    found_by: str  # "argument" | "kernel" | "PARALLALX_URL" | "server.json"

    def __repr__(self) -> str:  # never show the token
        return f"ServerRef(url={self.url!r}, found_by={self.found_by!r})"


def kernel_connection_file() -> Path | None:
    """The running ipykernel's connection file, or None outside a kernel."""
    try:
        from ipykernel.kernelapp import IPKernelApp
    except ImportError:
        return None
    if not IPKernelApp.initialized():
        return None
    app = IPKernelApp.instance()
    path = getattr(app, "abs_connection_file", None) or app.connection_file
    return Path(path) if path else None


def _runtime_dirs(connection_file: Path | None) -> list[Path]:
    dirs = [connection_file.parent] if connection_file else []
    try:
        from jupyter_core.paths import jupyter_runtime_dir

        dirs.append(Path(jupyter_runtime_dir()))
    except Exception:  # a broken jupyter_core config must not break the fallbacks
        pass
    out: list[Path] = []
    for d in dirs:
        if d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def running_servers(runtime_dirs: list[Path]) -> list[dict[str, Any]]:
    """The `jpserver-*.json` infos of live Jupyter servers in these dirs (read-only)."""
    found = []
    for d in runtime_dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            if not re.fullmatch(r"jpserver-.+\.json", name):
                continue
            try:
                info = json.loads((d / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(info, dict) and isinstance(info.get("pid"), int) and info.get("url") \
                    and _alive(info["pid"]):
                found.append(info)
    return found


def find_kernel_server(timeout: float = 2.0) -> tuple[str, str] | None:
    """(url, token) of the Jupyter server that started this kernel, or None."""
    connection_file = kernel_connection_file()
    if connection_file is None:
        return None
    match = re.fullmatch(r"kernel-(.+)\.json", connection_file.name)
    kernel_id = match.group(1) if match else None
    try:
        parent = int(os.environ.get("JPY_PARENT_PID") or os.getppid())
    except ValueError:
        parent = os.getppid()
    servers = running_servers(_runtime_dirs(connection_file))
    servers.sort(key=lambda info: info["pid"] != parent)
    for info in servers:
        url, token = str(info["url"]), str(info.get("token") or "")
        if kernel_id is None:
            if info["pid"] == parent:
                return url, token
            continue
        try:
            ApiClient(url, token, timeout).request(
                "GET", f"api/kernels/{urllib.parse.quote(kernel_id, safe='')}"
            )
        except ClientError as err:
            if err.status is None and info["pid"] == parent:
                # our parent did not answer in time (a busy machine): it is still ours, and
                # another server must not be taken for it
                return url, token
            continue
        return url, token
    return None


def locate_server(
    url: str | None = None, token: str | None = None, home: str | Path | None = None
) -> ServerRef:
    """Where this kernel's device is (see the module docstring for the order)."""
    if url:
        return ServerRef(check_url(url, "url"), token or "", "argument")
    notes = []
    if home is None:
        owner = find_kernel_server()
        if owner is not None:
            try:
                ApiClient(*owner, timeout=5).call("GET", "device")
                return ServerRef(owner[0], owner[1], "kernel")
            except ClientError as err:
                if err.status is None:
                    # no answer in time is not "no parallalx": a kernel never moves to the
                    # device named in its environment because its own server is busy
                    return ServerRef(owner[0], owner[1], "kernel")
                notes.append(f"this kernel's Jupyter server {owner[0]} has no parallalx ({err})")
        env_url = os.environ.get("PARALLALX_URL")
        if env_url:
            return ServerRef(check_url(env_url, "PARALLALX_URL"),
                             os.environ.get("PARALLALX_TOKEN", ""), "PARALLALX_URL")
    try:
        found = find_server(home=Path(home).expanduser() if home else None)
    except ServerNotFound as err:
        message = str(err).replace("pass --url and --token", "set PARALLALX_URL/PARALLALX_TOKEN")
        raise ServerNotFound("; ".join([*notes, message])) from None
    return ServerRef(found[0], found[1], "server.json")
