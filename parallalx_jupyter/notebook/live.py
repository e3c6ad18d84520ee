"""LiveState: one cached copy of a connection's requests and devices, kept fresh by its events.

Every live widget of a connection renders from the same LiveState, so ten displayed widgets cost
one REST refresh per event, not ten. Its single thread ("parallalx-live") is the only background
thread that touches widgets: it takes events from the EventStream, coalesces bursts, re-reads
the REST API and calls `view.on_live(kind)` on every attached view (`kind` is "data" after a
refresh, "tick" once a second for countdowns, "error" when the refresh failed). See
`widgets.py` for how the views make that safe.
"""

from __future__ import annotations

import logging
import queue
import threading
import weakref
from typing import Any, Protocol

from ..client import ClientError

log = logging.getLogger("parallalx_jupyter.notebook")

# At most this many views stay live per connection; attaching one more detaches the oldest
# (frontends never tell the kernel that an output was cleared, so old views would pile up).
MAX_VIEWS = 32


class LiveView(Protocol):
    def on_live(self, kind: str) -> None: ...

    def detach(self) -> None: ...


class LiveState:
    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.requests: list[dict[str, Any]] = []
        self.devices: list[dict[str, Any]] = []
        self.cluster: dict[str, Any] | None = None
        self.error: str | None = None
        self.loaded = False
        self._views: list[weakref.ref[Any]] = []
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._unsubscribe: Any = None

    @property
    def mode(self) -> str:
        """How updates arrive: "websocket", "polling", "connecting" or "stopped"."""
        events = self.connection._events
        return events.mode if events is not None else "stopped"

    def refresh(self) -> None:
        """Re-read requests and devices (raises ClientError; keeps the old data then)."""
        requests = self.connection.requests(state="all")
        devices = self.connection.devices()
        try:
            cluster = self.connection.call("GET", "cluster")
        except ClientError:  # a server without the cluster layer still lists devices
            cluster = None
        self.requests, self.devices, self.error, self.loaded = requests, devices, None, True
        self.cluster = cluster

    def request(self, request_id: str) -> dict[str, Any] | None:
        return next((r for r in self.requests if r["id"] == request_id), None)

    # -- views

    def attach(self, view: LiveView) -> None:
        dropped = []
        with self._lock:
            self._views = [r for r in self._views if r() is not None]
            self._views.append(weakref.ref(view))
            while len(self._views) > MAX_VIEWS:
                old = self._views.pop(0)()
                if old is not None:
                    dropped.append(old)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="parallalx-live", daemon=True
                )
                self._thread.start()
                self._unsubscribe = self.connection.events.subscribe(self._queue.put)
        for old in dropped:
            old.detach()

    def detach(self, view: LiveView) -> None:
        with self._lock:
            self._views = [r for r in self._views if r() is not None and r() is not view]
            last = not self._views
        if last:
            self.stop()

    def views(self) -> list[Any]:
        with self._lock:
            return [v for v in (r() for r in self._views) if v is not None]

    def stop(self) -> None:
        with self._lock:
            unsubscribe, self._unsubscribe = self._unsubscribe, None
            thread, self._thread = self._thread, None
        if unsubscribe is not None:
            unsubscribe()
        if thread is not None:
            self._queue.put(None)  # wakes the thread, which sees it is no longer current

    # -- the thread

    def _run(self) -> None:
        me = threading.current_thread()
        while self._thread is me:
            try:
                item = self._queue.get(timeout=1.0)
            except queue.Empty:
                self._notify("tick")
                continue
            if item is None:
                continue
            while True:  # coalesce a burst (request-decided + device-added) into one refresh
                try:
                    if self._queue.get(timeout=0.02) is None:
                        break
                except queue.Empty:
                    break
            try:
                self.refresh()
                kind = "data"
            except ClientError as err:
                self.error = str(err)
                kind = "error"
            self._notify(kind)

    def _notify(self, kind: str) -> None:
        for view in self.views():
            try:
                view.on_live(kind)
            except Exception:  # a broken view must not stop the others
                log.exception("parallalx live view failed")
