"""The device manager: one object for the handlers, over the pieces that do the work.

Handlers (local REST and the peer listener) stay thin and call into this; the pieces own the
rules (who may ask what, which state transitions exist, what each side learns) and speak to
storage, peers and the event logger through the objects they are given:

- `inbound.InboundRequests`: requests peers send here (open, reveal, status), the local user's
  decision, caps and expiry;
- `outbound.OutboundInvitations`: requests sent from here, and learning their outcome;
- `membership.PairedDevices`: revoking a pairing, from either side;
- `cluster_membership.ClusterMembership`: joining and leaving clusters, following the
  `device-added` / `device-revoked` events (events.py);
- `views.DeviceViews`: what the REST API, the CLI and the panel read;
- `channel.PeerChannel`: signed messages to and from peers.

This object only builds them, runs the background loop (expiry, outcome polling, nonce purge)
and passes calls on. Pure asyncio, no tornado.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..identity import DeviceIdentity
from ..pairing import Opened, ProtocolError
from ..peer_client import PeerClient
from ..profile import ProfileCache
from ..store import Store
from .channel import PeerChannel
from .cluster_membership import ClusterMembership, ResolvePython
from .events import DeviceEvents, Emit
from .inbound import InboundRequests
from .membership import PairedDevices
from .outbound import OutboundInvitations
from .settings import PairingSettings
from .tasks import TaskSet
from .views import DeviceViews

if TYPE_CHECKING:
    from ..cluster.service import ClusterService

log = logging.getLogger("parallalx_jupyter")


class DeviceManager:
    def __init__(
        self,
        identity: DeviceIdentity,
        store: Store,
        settings: PairingSettings,
        emit: Emit,
        profile: ProfileCache | None = None,
    ) -> None:
        self.identity = identity
        self.store = store
        self.settings = settings
        self.profile = profile or ProfileCache()
        self.events = DeviceEvents(emit)
        self.tasks = TaskSet()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.channel = PeerChannel(identity, store, settings, self.tasks)
        self.inbound = InboundRequests(identity, store, settings, self.events, self.channel)
        self.outbound = OutboundInvitations(identity, store, settings, self.events, self.channel,
                                            wake=self._wake.set)
        self.paired = PairedDevices(store, self.events, self.channel)
        self.cluster_membership = ClusterMembership(store, self.events, self.channel,
                                                    self.outbound, self.tasks)
        self.views = DeviceViews(identity, store, settings, self.profile,
                                 sweep=self.inbound.sweep,
                                 incomplete_count=self.inbound.incomplete_count)

    # ------------------------------------------------------------------ wiring set by the app

    @property
    def peers(self) -> PeerClient:
        return self.channel.peers

    @peers.setter
    def peers(self, peers: PeerClient) -> None:
        self.channel.peers = peers

    @property
    def cluster(self) -> ClusterService | None:
        return self.cluster_membership.cluster

    @cluster.setter
    def cluster(self, cluster: ClusterService | None) -> None:
        self.cluster_membership.cluster = cluster
        self.outbound.cluster = cluster

    @property
    def resolve_python(self) -> ResolvePython:
        return self.cluster_membership.resolve_python

    @resolve_python.setter
    def resolve_python(self, resolve: ResolvePython) -> None:
        self.cluster_membership.resolve_python = resolve

    @property
    def peer_urls(self) -> list[str]:
        return self.views.peer_urls

    @peer_urls.setter
    def peer_urls(self, urls: list[str]) -> None:
        self.views.peer_urls = urls

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background loop (expiry, outcome polling, nonce purge)."""
        if self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._background())
            self.tasks.spawn(self.profile.get())  # warm the accelerator facts off the IOLoop
            self.cluster_membership.start()

    async def stop(self) -> None:
        tasks = self.tasks.running()
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        await self.cluster_membership.close()
        self.channel.peers.close()

    async def _background(self) -> None:
        idle = 0
        while True:
            try:
                await self.inbound.sweep()
                busy = await self.outbound.poll_pending()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the loop alive; the next round retries
                log.exception("parallalx background round failed")
                busy = False
            idle = 0 if busy else min(idle + 1, 5)
            delay = self.settings.poll_interval * (1 + idle)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.TimeoutError:
                pass

    async def sweep(self) -> None:
        await self.inbound.sweep()

    # ------------------------------------------------------------------ local REST API

    async def device_info(self, refresh: bool = False) -> dict[str, Any]:
        return await self.views.device_info(refresh)

    async def list_requests(
        self, direction: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        return await self.views.list_requests(direction, state)

    async def get_request(self, request_id: str) -> dict[str, Any]:
        return await self.views.get_request(request_id)

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self.views.list_devices()

    async def get_device(self, device_id: str) -> dict[str, Any]:
        return await self.views.get_device(device_id)

    async def decide(
        self, request_id: str, accept: bool, selection: dict[str, Any] | None = None,
        expected_hash: str | None = None, reason: str | None = None,
    ) -> dict[str, Any]:
        return await self.inbound.decide(request_id, accept, selection, expected_hash, reason)

    async def revoke(self, device_id: str) -> dict[str, Any]:
        await self.paired.revoke(device_id)
        return await self.views.get_device(device_id)

    async def retry_join(self, main_id: str) -> None:
        await self.cluster_membership.retry_join(main_id)

    async def send_request(
        self, url: str, kind: str = "invite", asks: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return await self.outbound.send_request(url, kind, asks)

    # ------------------------------------------------------------------ peer listener

    def hello(self) -> dict[str, Any]:
        return self.channel.hello()

    def open(self, envelope: Any, expected_type: str | tuple[str, ...]) -> Opened:
        return self.channel.open(envelope, expected_type)

    async def check_nonce(self, opened: Opened) -> None:
        await self.channel.check_nonce(opened)

    def respond(self, opened: Opened, body: dict[str, Any]) -> dict[str, Any]:
        return self.channel.respond(opened, body)

    async def handle_open(self, opened: Opened, source_ip: str) -> dict[str, Any]:
        return await self.inbound.handle_open(opened, source_ip)

    async def handle_reveal(self, opened: Opened) -> dict[str, Any]:
        return await self.inbound.handle_reveal(opened)

    async def handle_status(self, opened: Opened) -> dict[str, Any]:
        return await self.inbound.handle_status(opened)

    async def handle_notify(self, opened: Opened) -> dict[str, Any]:
        if opened.type == "request.decided":
            return await self.outbound.handle_decided(opened)
        if opened.type == "device.revoked":
            return await self.paired.revoked_by_peer(opened)
        raise ProtocolError(400, f"'{opened.type}' cannot be sent to /notify")

    async def handle_join(self, opened: Opened) -> dict[str, Any]:
        return await self.cluster_membership.handle_join(opened)
