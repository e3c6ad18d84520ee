"""Paired devices: what an accepted request becomes, and revoking a pairing from either side.

Device states: `paired`, `revoked` (by this device), `revoked_by_peer`. A revoke is recorded
first, then published as `device-revoked` (cluster membership stops sharing on it) and pushed
to the peer (`device.revoked`).
"""

from __future__ import annotations

import time
from typing import Any

from ..pairing import Opened, ProtocolError
from ..store import Store
from .channel import PeerChannel
from .errors import ApiError
from .events import DeviceEvents


def role_for(kind: str, direction: str) -> str:
    """The role the *peer* takes once a request is accepted. An invite asks the receiver to run
    workers for the sender; an offer is the reverse."""
    sender_is_main = kind == "invite"
    peer_is_sender = direction == "incoming"
    return "main" if sender_is_main == peer_is_sender else "worker"


def device_from_request(
    row: dict[str, Any], selection: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The paired device (and its grant: what was asked, what the user chose) that an accepted
    request becomes; the store writes it together with the decision."""
    return {
        "id": row["peer_id"],
        "name": row["peer_name"],
        "public_key": row["peer_key"],
        "peer_url": row["peer_url"],
        "role": role_for(row["kind"], row["direction"]),
        "request_id": row["id"],
        "asks": row["asks"],
        "selection": selection or {},
    }


class PairedDevices:
    def __init__(self, store: Store, events: DeviceEvents, channel: PeerChannel) -> None:
        self.store = store
        self.events = events
        self.channel = channel

    async def revoke(self, device_id: str) -> None:
        """This device's user ends a pairing."""
        row = await self.store.get_device(device_id)
        if row is None:
            raise ApiError(404, f"no paired device with ID {device_id!r}")
        if row["state"] == "revoked":
            raise ApiError(409, "device is already revoked")
        now = time.time()
        if not await self.store.set_device_state(
            device_id, "revoked", now, only_if=("paired", "revoked_by_peer")
        ):
            raise ApiError(409, "device is already revoked")
        if row["peer_url"] and row["state"] == "paired":
            self.channel.push(row["peer_url"], device_id, "device.revoked", {})
        await self.events.publish("device-revoked", {
            "peer_id": device_id, "peer_name": row["name"], "by": "self",
        })

    async def revoked_by_peer(self, opened: Opened) -> dict[str, Any]:
        """The peer listener got `device.revoked`: the peer ended the pairing."""
        device = await self.store.get_device(opened.sender_id)
        if device is None:
            raise ProtocolError(404, "not paired")
        if await self.store.set_device_state(opened.sender_id, "revoked_by_peer", time.time()):
            await self.events.publish("device-revoked", {
                "peer_id": opened.sender_id, "peer_name": device["name"], "by": "peer",
            })
        return {"ok": True}
