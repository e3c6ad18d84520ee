"""The kernel's side of parallalx: find this device's Jupyter server and talk to its REST API.

Magics and widgets use nothing else, and this module uses `client.ApiClient`, the HTTP code path
the CLI uses too: one REST API, one event stream, no behaviour that lives only in a notebook.

Finding the server: `locate_server`, which lives in `parallalx_jupyter.client` (a job's reporter
uses it too) and is re-exported here. First match wins: `url`/`token` arguments
(`connect(url=..., token=...)`), the Jupyter server this kernel belongs to, `PARALLALX_URL` /
`PARALLALX_TOKEN`, `<home>/server.json` (see `client`'s docstring for the details).

Live updates (`EventStream`): one background thread per connection reads jupyter_server's
`/api/events/subscribe` websocket (token in a header, never in the URL) and passes on the events
whose schema ID starts with `SCHEMA_PREFIX`. If the websocket cannot connect or drops, it polls
the REST API instead (0.5 s, slowing by x1.5 up to 10 s while nothing changes, fast again on a
change) and retries the websocket with a growing delay (2 s .. 60 s). Subscribers get the event
dict, or `{"source": "poll" | "connected"}` when they should re-read the REST API (a change seen
by polling, or a (re)connect after which events may have been missed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..client import (
    SCHEMA_BASE,
    ApiClient,
    ClientError,
    ServerNotFound,
    ServerRef,
    find_kernel_server,
    locate_server,
)

log = logging.getLogger("parallalx_jupyter.notebook")

SCHEMA_PREFIX = SCHEMA_BASE + "/"
EVENTS_PATH = "api/events/subscribe"

__all__ = [
    "ClientError",
    "Connection",
    "EventStream",
    "ServerNotFound",
    "ServerRef",
    "connect",
    "disconnect",
    "find_kernel_server",
    "locate_server",
]


# ---------------------------------------------------------------------------- the connection


class Connection:
    """This device's REST API, as the kernel sees it. Methods return the API's JSON."""

    def __init__(
        self, url: str, token: str = "", found_by: str = "argument", *,
        timeout: float = 30.0, websocket: bool = True,
    ) -> None:
        self.client = ApiClient(url, token, timeout)
        self.found_by = found_by
        self.websocket = websocket
        self._lock = threading.Lock()
        self._events: EventStream | None = None
        self._live: Any = None

    def __repr__(self) -> str:
        return f"<parallalx Connection {self.url} (found by {self.found_by})>"

    @property
    def url(self) -> str:
        return self.client.url

    def call(self, method: str, path: str, body: Any = None) -> Any:
        return self.client.call(method, path, body)

    # -- this device, requests, devices: the client's methods (one per REST route)

    def device(self, refresh: bool = False) -> dict[str, Any]:
        return self.client.device(refresh)

    def requests(self, state: str = "open", direction: str | None = None) -> list[dict[str, Any]]:
        return self.client.requests(state, direction)

    def request(self, request_id: str) -> dict[str, Any]:
        return self.client.get_request(request_id)

    def accept(
        self, request_id: str, kernel: str | None = None, ide: str | None = None
    ) -> dict[str, Any]:
        return self.client.accept(request_id, kernel, ide)

    def reject(self, request_id: str, reason: str | None = None) -> dict[str, Any]:
        return self.client.reject(request_id, reason)

    def devices(self) -> list[dict[str, Any]]:
        return self.client.devices()

    def revoke(self, device: str) -> dict[str, Any]:
        """Revoke a paired device given its ID, a unique ID prefix or its name."""
        return self.client.revoke(device)

    def invite(self, url: str, *, offer: bool = False, **asks: Any) -> dict[str, Any]:
        """Send a connection request to the peer listener at `url` (`offer=True`: offer this
        device as a worker instead). `asks`: purpose, nthreads, memory_limit_gb, gpus,
        duration_hours. Returns our outgoing request with the verification code."""
        return self.client.invite(url, offer=offer, **asks)

    def wait_request(self, request_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Block until a request is decided (or `timeout`); returns its latest state."""
        deadline = time.monotonic() + timeout
        while True:
            request = self.request(request_id)
            if request["state"] != "pending" or time.monotonic() >= deadline:
                return request
            time.sleep(0.25)

    # -- live updates

    @property
    def events(self) -> EventStream:
        with self._lock:
            if self._events is None:
                self._events = EventStream(self.client, websocket=self.websocket)
            return self._events

    @property
    def live(self) -> Any:
        """The shared `LiveState` (cached requests and devices) that live widgets render."""
        with self._lock:
            if self._live is None:
                from .live import LiveState

                self._live = LiveState(self)
            return self._live

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
        if self._events is not None:
            self._events.stop()


_default: Connection | None = None
_default_lock = threading.Lock()


def connect(
    url: str | None = None, token: str | None = None, home: str | Path | None = None,
    *, websocket: bool = True,
) -> Connection:
    """The connection the magics and widgets use. Without arguments: the cached one, or find the
    server (see `locate_server`). With arguments: find that server and make it the default."""
    global _default
    with _default_lock:
        if _default is not None and url is None and home is None:
            return _default
        ref = locate_server(url, token, home)
        if _default is not None:
            _default.close()
        _default = Connection(ref.url, ref.token, ref.found_by, websocket=websocket)
        return _default


def disconnect() -> None:
    """Forget the default connection and stop its background threads."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = None


# ---------------------------------------------------------------------------- events


Subscriber = Callable[[dict[str, Any]], None]


class EventStream:
    """parallalx events for one server, from a background thread (see the module docstring)."""

    POLL_MIN, POLL_MAX, POLL_FACTOR = 0.5, 10.0, 1.5
    RETRY_MIN, RETRY_MAX = 2.0, 60.0

    def __init__(self, client: ApiClient, *, websocket: bool = True) -> None:
        self.client = client
        self.use_websocket = websocket
        self.mode = "stopped"  # "connecting" | "websocket" | "polling" | "stopped"
        self.last_error: str | None = None
        self._subscribers: dict[int, Subscriber] = {}
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ws: Any = None
        self._snapshot: str | None = None

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(event)` from the stream's thread; returns the unsubscribe function.
        The thread runs while there is at least one subscriber."""
        with self._lock:
            key = self._next
            self._next += 1
            self._subscribers[key] = callback
            if self._thread is None or not self._thread.is_alive() or self._stop.is_set():
                self._stop = threading.Event()  # a stopping thread finishes on its own event
                self._thread = threading.Thread(
                    target=self._run, args=(self._stop,), name="parallalx-events", daemon=True
                )
                self._thread.start()

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers.pop(key, None)
                empty = not self._subscribers
            if empty:
                self.stop(wait=False)

        return unsubscribe

    def stop(self, wait: bool = True) -> None:
        with self._lock:
            self._stop.set()
            thread, ws = self._thread, self._ws
            self.mode = "stopped"
        if ws is not None:
            with contextlib.suppress(Exception):
                ws.abort()
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _dispatch(self, event: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers.values())
        for callback in subscribers:
            try:
                callback(event)
            except Exception:  # one broken subscriber must not stop the stream
                log.exception("parallalx event subscriber failed")

    def _set_mode(self, stop: threading.Event, mode: str) -> None:
        # only the current thread reports, and a stopping one only that it stopped
        if stop is self._stop and (mode == "stopped" or not stop.is_set()):
            self.mode = mode

    def _run(self, stop: threading.Event) -> None:
        retry = self.RETRY_MIN
        while not stop.is_set():
            if self.use_websocket:
                started = time.monotonic()
                try:
                    self._run_websocket(stop)
                except Exception as err:
                    self.last_error = f"events websocket: {err or type(err).__name__}"
                    log.debug("parallalx events websocket failed: %s", err)
                if stop.is_set():
                    break
                if time.monotonic() - started > 10:  # it had been up: reconnect at once
                    retry = self.RETRY_MIN
                    continue
            self._set_mode(stop, "polling")
            self._poll(stop, retry if self.use_websocket else float("inf"))
            retry = min(retry * 2, self.RETRY_MAX)
        self._set_mode(stop, "stopped")

    def _run_websocket(self, stop: threading.Event) -> None:
        import websocket  # websocket-client, a jupyter_server dependency

        self._set_mode(stop, "connecting")
        ws = websocket.create_connection(
            self.client.ws_url(EVENTS_PATH),
            header=[f"Authorization: token {self.client.token}"],
            timeout=5,
        )
        with self._lock:
            if stop.is_set():
                ws.close()
                return
            self._ws = ws
        try:
            ws.settimeout(1.0)
            self._set_mode(stop, "websocket")
            self.last_error = None
            self._dispatch({"source": "connected"})
            while not stop.is_set():
                try:
                    message = ws.recv()
                except websocket.WebSocketTimeoutException:
                    continue
                if not message:
                    raise ConnectionError("the server closed the events websocket")
                try:
                    event = json.loads(message)
                except ValueError:
                    continue
                if isinstance(event, dict) and str(event.get("schema_id", "")).startswith(
                    SCHEMA_PREFIX
                ):
                    self._dispatch(event)
        finally:
            with self._lock:
                if self._ws is ws:
                    self._ws = None
            with contextlib.suppress(Exception):
                ws.close()

    def _poll(self, stop: threading.Event, duration: float) -> None:
        deadline = time.monotonic() + duration
        interval = self.POLL_MIN
        first = True
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                snapshot = json.dumps(
                    [self.client.call("GET", "requests?state=all"),
                     self.client.call("GET", "devices")], sort_keys=True,
                )
            except ClientError as err:
                self.last_error = str(err)
                snapshot = None
            if snapshot is not None and (first or snapshot != self._snapshot):
                self._snapshot = snapshot
                interval = self.POLL_MIN
                self._dispatch({"source": "poll"})
            else:
                interval = min(interval * self.POLL_FACTOR, self.POLL_MAX)
            first = False
            stop.wait(min(interval, max(0.0, deadline - time.monotonic())))
