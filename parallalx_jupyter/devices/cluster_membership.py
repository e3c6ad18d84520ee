"""This device's part in its paired devices' clusters, following the device events.

On `device-added` for a main device, join its cluster (certificate over the pairing channel,
environment, worker); on `device-revoked`, stop sharing at once (our worker for that main
device, or that device's worker here). Nothing calls this back: it subscribes to the events
the pairing flows publish (see events.py). It also answers a paired worker's certificate
request (`cluster.join` on the peer listener) and gives the cluster service the signed
exchange it renews its worker certificates with.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..pairing import Opened, ProtocolError, shown_hash
from ..peer_client import PeerError
from ..store import Store
from .channel import PeerChannel
from .errors import ApiError
from .events import DeviceEvents
from .outbound import OutboundInvitations
from .tasks import TaskSet

if TYPE_CHECKING:
    from ..cluster.service import ClusterService

ResolvePython = Callable[[dict[str, Any]], Awaitable[str]]
Exchange = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

log = logging.getLogger("parallalx_jupyter")

#: How long a worker device keeps asking a main device that does not answer its certificate
#: request (seconds). The main device may first have to start its scheduler (an accepted
#: offer), which on a busy machine takes longer than one peer call may.
JOIN_PATIENCE = 120.0


async def _server_python(selection: dict[str, Any]) -> str:
    return sys.executable


class ClusterMembership:
    def __init__(
        self,
        store: Store,
        events: DeviceEvents,
        channel: PeerChannel,
        outbound: OutboundInvitations,
        tasks: TaskSet,
    ) -> None:
        self.store = store
        self.channel = channel
        self.outbound = outbound
        self.tasks = tasks
        self.cluster: ClusterService | None = None
        #: the Python a joined worker runs, from what the user chose when accepting
        self.resolve_python: ResolvePython = _server_python
        events.subscribe("device-added", self._on_device_added)
        events.subscribe("device-revoked", self._on_device_revoked)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self.cluster is not None:
            self.cluster.exchange_for = self.cluster_exchange  # certificate renewal
            self.tasks.spawn(self.cluster.restore())

    async def close(self) -> None:
        if self.cluster is not None:
            await self.cluster.close()

    # ------------------------------------------------------------------ following the events

    async def _on_device_added(self, event: dict[str, Any]) -> None:
        if event["role"] == "main" and self.cluster is not None:
            self.tasks.spawn(self.follow_grant(event["peer_id"]))

    async def _on_device_revoked(self, event: dict[str, Any]) -> None:
        if self.cluster is None:
            return
        device = await self.store.get_device(event["peer_id"])
        if device is None:
            return
        if device["role"] == "main":
            await self.cluster.leave(device["id"])
        else:
            await self.cluster.revoke_device(device["id"])

    # ------------------------------------------------------------------ worker side

    async def _current_grant(self, main_id: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """The paired main device and what its user granted it; None once either is gone."""
        device = await self.store.get_device(main_id)
        grants = [g for g in await self.store.list_grants(main_id) if g["revoked_at"] is None]
        if device is None or device["state"] != "paired" or not grants:
            return None
        return device, grants[-1]

    async def follow_grant(self, main_id: str) -> None:
        """A main device was granted (again). A re-invite from a device we already serve,
        granting the same worker settings, must not cost the running worker (or its tasks):
        renew its certificate under the new grant instead. Other grants join afresh."""
        assert self.cluster is not None
        current = await self._current_grant(main_id)
        if current is None:
            return
        device, grant = current
        if not self.cluster.serves_with(main_id, grant["asks"]):
            await self.join_main(main_id)
            return
        try:
            await self.cluster.renew(main_id)
        except Exception as err:  # the old certificate stays valid: the worker keeps running
            message = getattr(err, "message", None) or str(err) or type(err).__name__
            log.warning("renewing the grant of %s failed: %s", main_id, message)
            self.cluster._set_join(main_id, {
                "message": f"the main device did not confirm the new invitation: {message}"})
            return
        self.cluster._set_join(main_id, {"request_id": device["request_id"], "message": None})

    async def join_main(self, main_id: str) -> None:
        """Serve a main device: certificate, environment, worker (see ClusterService.join)."""
        assert self.cluster is not None
        current = await self._current_grant(main_id)
        if current is None or not current[0]["peer_url"]:
            return
        device, grant = current
        exchange = await self.cluster_exchange(main_id)
        if exchange is None:
            return
        try:
            python = await self.resolve_python(grant["selection"] or {})
        except Exception as err:
            self.cluster._set_join(main_id, {"state": "failed", "message": str(err)})
            return
        await self.cluster.join(main_id, device["peer_url"], exchange, python, grant["asks"],
                                expected=grant["asks"].get("cluster"),
                                request_id=device["request_id"])

    async def retry_join(self, main_id: str) -> None:
        """Join `main_id` again now: restart a refused worker, or the whole join when it failed
        before a worker existed (certificate, environment)."""
        assert self.cluster is not None
        current = await self._current_grant(main_id)
        if current is None or current[0].get("role") != "main":
            # a worker device of this one (QA: `cluster retry beta` on the main device exited
            # 0 and left a lasting 'serving beta: failed (not a paired worker device)' entry)
            raise ApiError(404, f"not serving a paired main device with ID {main_id!r}")
        if not await self.cluster.retry_join(main_id):
            self.tasks.spawn(self.join_main(main_id))

    async def cluster_exchange(self, main_id: str) -> Exchange | None:
        """The signed `cluster.join` round trip to a main device we serve, bound to the request
        the user accepted: used to join, and again to renew the worker certificate before it
        expires (ClusterService.renew). None once the device is no longer paired or granted."""
        current = await self._current_grant(main_id)
        if current is None:
            return None
        device = current[0]
        request = await self.store.get_request(device["request_id"])
        if request is None:
            return None
        accepted = shown_hash(request["id"], request["kind"], request["asks"], request["code"])

        async def exchange(body: dict[str, Any]) -> dict[str, Any]:
            """One signed request, asked again (1, 2, 4 ... 10 s apart) while the main device
            gives no answer in time or is not ready, as long as it is still paired and
            granted; a refusal ends it at once."""
            body = {**body, "shown_hash": accepted}
            deadline = time.monotonic() + JOIN_PATIENCE
            delay = 1.0
            while True:
                try:
                    opened = await self.channel.exchange(device["peer_url"], main_id,
                                                         "cluster.join", body, path="/cluster/join")
                    return opened.body
                except PeerError as err:
                    if (not err.retryable or time.monotonic() + delay > deadline
                            or await self._current_grant(main_id) is None):
                        raise ApiError(502, err.message) from None
                    log.info("certificate request to %s: %s; asking again in %g s",
                             device["peer_url"], err.message, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

        return exchange

    # ------------------------------------------------------------------ main side

    async def _bound_to_accepted(self, device: dict[str, Any], hashed: str) -> bool:
        request = await self.store.get_request(device["request_id"] or "")
        return request is not None and hashed == shown_hash(
            request["id"], request["kind"], request["asks"], request["code"])

    async def handle_join(self, opened: Opened) -> dict[str, Any]:
        """A paired worker device asks for its cluster certificate."""
        from ..cluster.service import ClusterError

        device = await self.store.get_device(opened.sender_id)
        if device is None or device["state"] != "paired":
            # the accept may have raced its own notification: ask the peer now
            await self.outbound.poll_pending(opened.sender_id)
            device = await self.store.get_device(opened.sender_id)
        if device is None or device["state"] != "paired" or device["role"] != "worker":
            raise ProtocolError(403, "not a paired worker device of this main device")
        if not await self._bound_to_accepted(device, opened.body["shown_hash"]):
            # a re-invite this device sent may have been accepted a moment ago, its news not
            # here yet: ask the peer, then check against what it says
            await self.outbound.poll_pending(opened.sender_id)
            device = await self.store.get_device(opened.sender_id)
            if device is None or device["state"] != "paired" or not await self._bound_to_accepted(
                    device, opened.body["shown_hash"]):
                raise ProtocolError(
                    403, "the certificate request is not bound to the accepted request")
        if self.cluster is None:
            raise ProtocolError(503, "this device cannot run a cluster")
        try:
            await self.cluster.ensure_started()
            return self.cluster.sign_join(opened.sender_id, opened.body["csr"])
        except ClusterError as err:
            raise ProtocolError(err.status if err.status < 500 else 503, err.message) from None
