"""The announcer and the browser: one `AsyncZeroconf` on the server's event loop (no thread,
nothing blocking), started and stopped with the server.

Interfaces follow the peer listener's bind address: a listener on one address (127.0.0.1 for
the tests' devices, a LAN address) announces and browses on that interface only; a wildcard
listener announces every interface's address and browses on all of them. Records carry a short
TTL (`TTL`), so a device that died without saying goodbye drops off the lists within minutes.

Discovery is a convenience: where multicast does not work (no interface, a container without
it, a firewall) it logs one line, lists nothing and the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from .records import (
    SERVICE_TYPE,
    NearbyDevice,
    announce_addresses,
    instance_name,
    is_wildcard,
    parse_record,
    txt_record,
)

MAX_NEARBY = 64  # the list's cap: a flood of records on the link cannot grow it further
TTL = 120  # seconds a record lives without being refreshed
REFRESH_S = 60.0  # how often a wildcard listener's addresses are checked for changes
RESOLVE_MS = 3000


class Discovery:
    """Announce this device's peer listener (when `announce`) and keep the list of the others
    heard (`nearby()`), this device excluded."""

    def __init__(
        self, *, device_id: str, device_name: str, peer_ip: str, peer_port: int,
        announce: bool = True, log: logging.Logger | None = None,
        max_devices: int = MAX_NEARBY,
    ) -> None:
        self.device_id = device_id
        self.device_name = device_name
        self.peer_ip = peer_ip
        self.peer_port = peer_port
        self.announce = announce
        self.log = log or logging.getLogger(__name__)
        self.max_devices = max_devices
        #: why discovery does not work here (logged once), or None
        self.unavailable: str | None = None
        self._zc: Any = None
        self._browser: Any = None
        self._info: Any = None
        self._addresses: list[str] = []
        self._found: dict[str, NearbyDevice] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolving: set[str] = set()
        self._warned: set[str] = set()

    # -------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start browsing, and announcing in the background; never raises (a failure is
        logged once)."""
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        interfaces: Any = InterfaceChoice.All if is_wildcard(self.peer_ip) else [self.peer_ip]
        try:
            self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        except Exception as err:  # no multicast interface, address not on this host, ...
            self.unavailable = f"{type(err).__name__}: {err}"
            self._warn("start", "device discovery is off on this server (no usable multicast "
                       "interface for %s: %s); devices can still be invited by URL",
                       self.peer_ip, self.unavailable)
            return
        if self.announce:  # probing takes a second or so: not on the server's start path
            self._spawn(self._register())
        try:
            self._browser = AsyncServiceBrowser(
                self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change]
            )
        except Exception as err:
            self.unavailable = f"{type(err).__name__}: {err}"
            self._warn("browse", "cannot look for nearby devices: %s", self.unavailable)
        if self.announce and is_wildcard(self.peer_ip):
            self._spawn(self._refresh_addresses())

    async def stop(self) -> None:
        """Say goodbye (nearby devices drop this one at once) and close the sockets."""
        for task in list(self._tasks):
            task.cancel()
        self._tasks.clear()
        self._resolving.clear()
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.async_cancel()
            self._browser = None
        if self._info is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(zc.async_unregister_service(self._info), 5)
            self._info = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(zc.async_close(), 5)
        self._found.clear()

    # -------------------------------------------------------------------- the list

    def nearby(self) -> list[NearbyDevice]:
        """Devices heard, by name then ID; empty where discovery does not work."""
        return sorted(self._found.values(), key=lambda d: (d["name"].lower(), d["id"]))

    # -------------------------------------------------------------------- announcing

    def _service_info(self, addresses: list[str]) -> Any:
        from zeroconf.asyncio import AsyncServiceInfo

        return AsyncServiceInfo(
            SERVICE_TYPE,
            instance_name(self.device_id),
            addresses=[socket.inet_aton(a) for a in addresses],
            port=self.peer_port,
            properties=txt_record(self.device_id, self.device_name, self.peer_port,
                                  addresses[0]),
            server=f"parallalx-{self.device_id[:16].lower()}.local.",
            host_ttl=TTL,
            other_ttl=TTL,
        )

    async def _register(self) -> None:
        self._addresses = announce_addresses(self.peer_ip)
        info = self._service_info(self._addresses)
        try:
            await self._zc.async_register_service(info, allow_name_change=False)
        except Exception as err:  # a name conflict (the same ID elsewhere), send failures
            self._warn("announce", "cannot announce this device on the local network: %s: %s",
                       type(err).__name__, err)
            return
        self._info = info
        self.log.info("parallalx: announcing this device on the local network at %s",
                      ", ".join(info.parsed_addresses()))

    async def _refresh_addresses(self) -> None:
        """A wildcard listener's addresses change with the network (Wi-Fi, DHCP): re-announce
        with the new ones."""
        while True:
            await asyncio.sleep(REFRESH_S)
            addresses = announce_addresses(self.peer_ip)
            if addresses == self._addresses or self._zc is None:
                continue
            info = self._service_info(addresses)
            try:
                if self._info is None:
                    await self._zc.async_register_service(info, allow_name_change=False)
                else:
                    await self._zc.async_update_service(info)
            except Exception as err:
                self._warn("update", "cannot update this device's announcement: %s", err)
                continue
            self._info, self._addresses = info, addresses

    # -------------------------------------------------------------------- browsing

    def _on_change(self, zeroconf: Any, service_type: str, name: str,
                   state_change: Any) -> None:
        from zeroconf import ServiceStateChange

        if name == instance_name(self.device_id):
            return  # this device
        if state_change is ServiceStateChange.Removed:
            self._found.pop(name, None)
            return
        if name in self._resolving:
            return
        if name not in self._found and len(self._found) + len(self._resolving) >= self.max_devices:
            self._warn("cap", "more than %d devices announce themselves nearby: the rest are "
                       "not listed", self.max_devices)
            return
        self._resolving.add(name)
        self._spawn(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        try:
            await self._resolve_one(name)
        finally:
            self._resolving.discard(name)

    async def _resolve_one(self, name: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        try:
            if not await info.async_request(self._zc.zeroconf, RESOLVE_MS):
                return
        except Exception:
            return  # a malformed or vanished record: not listed
        device = parse_record(name, info.properties or {},
                              info.parsed_addresses(IPVersion.V4Only), info.port)
        if device is None or device["id"] == self.device_id:
            self._found.pop(name, None)
            return
        if name in self._found or len(self._found) < self.max_devices:
            self._found[name] = device

    # -------------------------------------------------------------------- helpers

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """Log `message` the first time only: discovery trouble is not worth a log flood."""
        if key not in self._warned:
            self._warned.add(key)
            self.log.warning(message, *args)
