"""The Dask dashboard of this device's scheduler, served through the Jupyter server.

`<base_url>/parallalx/dashboard/<path>` proxies to the scheduler's own HTTP server (bound to
127.0.0.1 by `cluster/scheduler.py`), so the panel's "Dashboard" link works wherever Jupyter is
reached from (a remote browser, a JupyterHub `base_url`), the way dask-labextension and
jupyter-server-proxy serve it. Plain HTTP and the bokeh websockets (`.../ws`) both pass.

What it never does:
- proxy anywhere else: the only target is the `http_address` the local scheduler wrote into its
  state file, and it must be a loopback address; the path is checked (no `..`, no scheme, no
  authority), so a request cannot pick another host or port;
- pass the Jupyter credentials on: the `Cookie` and `Authorization` headers and a `token` query
  argument stay here (bokeh would otherwise copy the cookies into its session token);
- answer without Jupyter authentication and the `parallalx` read permission: refusals are 403
  `{"error": ...}` like the REST API's.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.utils import ensure_async, url_path_join
from tornado import httpclient, web, websocket

from ..errors import ParallalxError
from .json_errors import JsonErrors

AUTH_RESOURCE = "parallalx"
DASHBOARD_PREFIX = "parallalx/dashboard"

# bokeh/dask paths: letters, digits and a few separators; `..` segments are refused below
_PATH = re.compile(r"[A-Za-z0-9_\-.~/]*")
# request headers passed to the dashboard (never Cookie / Authorization / Host)
_FORWARD_REQUEST = ("Accept", "Accept-Language", "If-None-Match", "If-Modified-Since",
                    "User-Agent")
# response headers passed back to the browser
_FORWARD_RESPONSE = ("Content-Type", "Cache-Control", "ETag", "Last-Modified", "Expires")


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def dashboard_origin(manager: Any) -> str:
    """`http://127.0.0.1:PORT` of this device's running scheduler's dashboard, or an error."""
    cluster = getattr(manager, "cluster", None)
    if cluster is None:
        raise ParallalxError("the cluster is not available on this server", 503)
    scheduler = cluster.scheduler
    state = scheduler.read_state() if scheduler is not None else None
    if not state:
        raise ParallalxError("the cluster is not running: start it first", 503)
    address = state.get("http_address")
    if not state.get("dashboard_link") or not isinstance(address, str):
        raise ParallalxError("the Dask dashboard is not available (is bokeh installed?)", 503)
    parts = urlsplit(address)
    if parts.scheme != "http" or not _is_loopback(parts.hostname) or parts.path not in ("", "/"):
        raise ParallalxError("the scheduler's dashboard is not on a loopback address", 503)
    return f"http://{parts.netloc}"


def checked_path(path: str) -> str:
    """The path below the dashboard's root, or a 400 for anything that is not a plain path."""
    if len(path) > 1024 or not _PATH.fullmatch(path) or ".." in path.split("/"):
        raise ParallalxError("not a dashboard path", 400)
    return path.lstrip("/")


class DashboardProxyHandler(JsonErrors, WebSocketMixin, websocket.WebSocketHandler,
                            JupyterHandler):
    """GET (pages, scripts, JSON) and websocket upgrades to the local scheduler's dashboard."""

    auth_resource = AUTH_RESOURCE

    def initialize(self) -> None:
        self._upstream: websocket.WebSocketClientConnection | None = None
        self._target = ""
        self._subprotocols: list[str] = []

    # -- refusals as JSON, as the REST API answers them

    def set_default_headers(self) -> None:
        if not self._is_upgrade():
            super().set_default_headers()

    def _is_upgrade(self) -> bool:
        return self.request.headers.get("Upgrade", "").lower() == "websocket"

    async def _check_access(self) -> None:
        user = self.current_user
        if user is None:
            raise web.HTTPError(403, "authentication required")
        allowed = await ensure_async(
            self.authorizer.is_authorized(self, user, "read", AUTH_RESOURCE)
        )
        if not allowed:
            raise web.HTTPError(403, "not authorized to read parallalx")

    def _query(self) -> str:
        kept = [(k, v) for k, v in parse_qsl(self.request.query, keep_blank_values=True)
                if k != "token"]
        return f"?{urlencode(kept)}" if kept else ""

    # -- HTTP

    async def get(self, path: str) -> None:  # type: ignore[override]
        await self._check_access()
        origin = dashboard_origin(self.settings["parallalx_manager"])
        rel = checked_path(path)
        self._target = f"{origin}/{rel}{self._query()}"
        if self._is_upgrade():
            await websocket.WebSocketHandler.get(self, path)
            return
        headers = {k: v for k in _FORWARD_REQUEST if (v := self.request.headers.get(k))}
        request = httpclient.HTTPRequest(
            self._target, method="GET", headers=headers, follow_redirects=False,
            connect_timeout=10, request_timeout=60, decompress_response=True,
        )
        try:
            response = await httpclient.AsyncHTTPClient().fetch(request, raise_error=False)
        except OSError as err:
            raise ParallalxError(f"the Dask dashboard did not answer: {err}", 502) from None
        if response.code == 599:
            raise ParallalxError("the Dask dashboard did not answer", 502)
        self.set_status(response.code, response.reason)
        for name in _FORWARD_RESPONSE:
            value = response.headers.get(name)
            if value:
                self.set_header(name, value)
        location = response.headers.get("Location")
        if location:
            self.set_header("Location", self._rewrite_location(location, origin))
        if response.code in (204, 304):
            self.finish()
            return
        self.finish(response.body or b"")

    def _rewrite_location(self, location: str, origin: str) -> str:
        """A redirect inside the dashboard stays behind the proxy; anything else is dropped."""
        base = url_path_join(self.base_url, DASHBOARD_PREFIX)
        if location.startswith(origin):
            location = location[len(origin):]
        parts = urlsplit(location)
        if parts.scheme or parts.netloc:
            return base + "/"
        if location.startswith("/"):
            return base + location
        return location

    # -- websocket

    def check_xsrf_cookie(self) -> None:
        # GET only (the upgrade is a GET); the Origin check of WebSocketMixin applies
        return None

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        # bokeh sends ["bokeh", <session token>]: the dashboard must get both
        self._subprotocols = list(subprotocols)
        return subprotocols[0] if subprotocols else None

    async def open(self, path: str) -> None:  # type: ignore[override]
        super().open()
        url = "ws" + self._target[len("http"):]
        try:
            self._upstream = await websocket.websocket_connect(
                httpclient.HTTPRequest(url, connect_timeout=10),
                on_message_callback=self._from_dashboard,
                subprotocols=self._subprotocols or None,
            )
        except (OSError, websocket.WebSocketError, httpclient.HTTPClientError) as err:
            self.log.warning("parallalx: the dashboard websocket failed: %s", err)
            self.close(1011, "the Dask dashboard did not answer")

    def _from_dashboard(self, message: str | bytes | None) -> None:
        if message is None:
            self.close()
            return
        try:
            self.write_message(message, binary=isinstance(message, bytes))
        except websocket.WebSocketClosedError:
            if self._upstream is not None:
                self._upstream.close()

    async def on_message(self, message: str | bytes) -> None:
        if self._upstream is not None:
            await self._upstream.write_message(message, binary=isinstance(message, bytes))

    def on_close(self) -> None:
        if self._upstream is not None:
            self._upstream.close()
            self._upstream = None


def dashboard_handlers() -> list[tuple[str, type]]:
    return [(url_path_join("/", DASHBOARD_PREFIX, r"(.*)"), DashboardProxyHandler)]
