"""A device's pairing side in this process: no Jupyter server, no subprocess.

`InProcessDevice` wires what `ParallalxApp` wires for pairing (identity, store, `DeviceManager`,
the real `PeerListener` over HTTPS on 127.0.0.1) on an asyncio loop in a thread of its own, so
that blocking tests can call it like a `LocalDevice`: `api()` takes the local REST API's paths
and answers what its handlers answer (a `DeviceError` with the status for an `ApiError`), and
devices reach each other's listeners over real TLS connections. It has no cluster, environments
or jobs (the app adds those; an invite then carries no cluster offer) and no accelerator probe.

The REST handlers themselves are tested in-process through pytest-jupyter (tests/server), and a
few tests per flow still run whole device processes (`make_device`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from parallalx_jupyter.devices import ApiError, DeviceManager, PairingSettings
from parallalx_jupyter.identity import DeviceIdentity
from parallalx_jupyter.local_device import DeviceError
from parallalx_jupyter.profile import ProfileCache
from parallalx_jupyter.server.peer import PeerListener
from parallalx_jupyter.store import Store

# what PairingSettings takes; anything else given to the device is a PeerListener setting
_LISTENER_SETTINGS = ("rate", "burst", "global_rate")


class _NoProbe(ProfileCache):
    """The profile without the torch probe (a subprocess, seconds of CPU per device)."""

    async def get(self, refresh: bool = False) -> dict[str, Any]:
        return self.peek()


@dataclass
class InProcessDevice:
    """One device in this process. `start()` may follow `stop()` or `kill()`: the same home
    (identity and database) and the same peer port, as a restarted device process has."""

    home: Path
    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    peer_port: int = 0
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    manager: DeviceManager | None = None
    listener: PeerListener | None = None
    store: Store | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def state_dir(self) -> Path:
        return self.home / "state"  # where a LocalDevice keeps it

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"

    @property
    def device_id(self) -> str:
        assert self.manager is not None, "device not started"
        return self.manager.identity.device_id

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> InProcessDevice:
        assert self._loop is None, "already running"
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # whatever is left (a killed device's tasks) ends here, not as warnings later
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.close()

        self._thread = threading.Thread(target=run, name=f"inprocess-{self.name}", daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop
        try:
            self.run(self._up())
        except BaseException:
            self.kill()
            raise
        return self

    async def _up(self) -> None:
        identity = DeviceIdentity.load_or_create(self.state_dir)
        self.store = Store(self.state_dir / "parallalx.sqlite3")
        pairing = {k: v for k, v in self.settings.items() if k not in _LISTENER_SETTINGS}
        listening = {k: v for k, v in self.settings.items() if k in _LISTENER_SETTINGS}
        settings = PairingSettings(device_name=self.name, **{"poll_interval": 0.2, **pairing})
        self.manager = DeviceManager(identity, self.store, settings,
                                     lambda name, data: self.events.append((name, data)),
                                     profile=_NoProbe())
        self.listener = PeerListener(self.manager, "127.0.0.1", self.peer_port,
                                     str(identity.cert_path), str(identity.key_path),
                                     **listening)
        self.listener.start()
        self.peer_port = settings.peer_port = self.listener.port
        self.manager.peer_urls = [self.peer_url]
        self.manager.start()

    def stop(self) -> None:
        """What the server does when it stops (ParallalxApp.stop_extension, pairing part)."""
        if self._loop is None:
            return
        try:
            self.run(self._down())
        finally:
            self._halt()

    async def _down(self) -> None:
        if self.manager is not None:
            await self.manager.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.store is not None:
            self.store.close()
            self.store = None

    def kill(self) -> None:
        """A crash: none of the device's own shutdown runs (no manager.stop, no task finishes
        what it was doing); only what the kernel releases for a killed process is released
        (the listening socket, open connections, the database connection)."""
        if self._loop is None:
            return
        try:
            self.run(self._crash())
        finally:
            self._halt()

    async def _crash(self) -> None:
        if self.listener is not None:
            self.listener.server.stop()
            for sock in self.listener.sockets:
                sock.close()
            await self.listener.server.close_all_connections()
        me = asyncio.current_task()
        for task in asyncio.all_tasks():
            if task is not me:
                task.cancel()
        if self.store is not None:
            self.store.close()
            self.store = None

    def _halt(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        self.manager = self.listener = None
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)

    # ------------------------------------------------------------------ calls

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        """Run `coro` on the device's loop and return its result (from any other thread)."""
        assert self._loop is not None, "device not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """The local REST API's call as its handler makes it (server/handlers.py)."""
        parts = urlsplit(path.strip("/"))
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        route = (method, *parts.path.split("/"))
        call = self._route(route, query, body or {})
        if call is None:
            raise DeviceError(f"{method} {path}: 404 no such route here", 404)
        try:
            return self.run(call())
        except ApiError as err:
            raise DeviceError(f"{method} {path}: {err.status} {err.message}", err.status) from None

    def _route(self, route: tuple[str, ...], query: dict[str, str],
               body: dict[str, Any]) -> Callable[[], Coroutine[Any, Any, Any]] | None:
        m = self.manager
        assert m is not None, "device not running"
        match route:
            case ("GET", "device"):
                return lambda: m.device_info()
            case ("GET", "requests"):
                return lambda: m.list_requests(query.get("direction"),
                                               query.get("state") or "open")
            case ("GET", "requests", rid):
                return lambda: m.get_request(rid)
            case ("POST", "requests", rid, "accept"):
                return lambda: m.decide(rid, True, None, expected_hash=body.get("shown_hash"),
                                        reason=body.get("note"))
            case ("POST", "requests", rid, "reject"):
                return lambda: m.decide(rid, False, reason=body.get("reason"))
            case ("GET", "devices"):
                return lambda: m.list_devices()
            case ("GET", "devices", device_id):
                return lambda: m.get_device(device_id)
            case ("POST", "devices", device_id, "revoke"):
                return lambda: m.revoke(device_id)
            case ("POST", "invitations"):
                return lambda: m.send_request(body["url"], body.get("kind", "invite"),
                                              body.get("asks"))
        return None
