"""Requests other devices send to this one: the peer-listener side of pairing, the local
user's decision, the caps on open requests, and expiry.

Request states: `handshake` (opened, code not yet fixed) -> `pending` (code shown, waiting for
the receiving user) -> `accepted` | `rejected` | `expired` | `superseded`. A handshake lives only
`reveal_window` seconds (a real requester reveals within one round trip); it gets `request_ttl`
once revealed. Never-revealed requests are not shown as requests: the user sees their number
(`incomplete_requests` of the device view), so a flood of them is visible, not silent.
"""

from __future__ import annotations

import time
from typing import Any

from ..identity import DeviceIdentity
from ..pairing import (
    CLUSTER_SPEC,
    NAME_MAX,
    Opened,
    ProtocolError,
    clean_asks,
    clean_text,
    commitment,
    new_nonce,
    new_request_id,
    shown_hash,
    validate,
    verification_code,
)
from ..store import Store
from .channel import PeerChannel
from .errors import ApiError
from .events import DeviceEvents
from .membership import device_from_request
from .settings import PairingSettings
from .views import never_revealed, request_view


class InboundRequests:
    def __init__(
        self,
        identity: DeviceIdentity,
        store: Store,
        settings: PairingSettings,
        events: DeviceEvents,
        channel: PeerChannel,
    ) -> None:
        self.identity = identity
        self.store = store
        self.settings = settings
        self.events = events
        self.channel = channel

    # ------------------------------------------------------------------ expiry

    async def sweep(self) -> None:
        """Close every request (either direction) past its expiry; forget old nonces and
        never-revealed requests."""
        now = time.time()
        for row in await self.store.expire_requests(now):
            if not never_revealed(row):  # nobody saw those: no event, they are counted
                await self.events.request_decided(row, "expired")
        await self.store.purge_nonces(now)
        await self.store.purge_incomplete(now - self._incomplete_horizon())

    def _incomplete_horizon(self) -> float:
        """How far back never-revealed requests are counted (and kept): as long as a real
        request would have been shown."""
        return max(self.settings.request_ttl, self.settings.reveal_window)

    async def incomplete_count(self) -> int:
        """Incoming requests opened in the last `request_ttl` seconds whose reveal window ended
        without a reveal: a failed pairing, or someone holding this device's caps."""
        now = time.time()
        return await self.store.count_incomplete(now, now - self._incomplete_horizon())

    # ------------------------------------------------------------------ peer listener side

    async def handle_open(self, opened: Opened, source_ip: str) -> dict[str, Any]:
        body = opened.body
        asks = clean_asks(body["asks"])
        if body.get("cluster") is not None:
            if body["kind"] != "invite":
                raise ProtocolError(400, "only an invite carries the main device's cluster")
            asks["cluster"] = validate(body["cluster"], CLUSTER_SPEC, "cluster")
        now = time.time()
        if await self.store.count_open(now) >= self.settings.max_pending:
            raise ProtocolError(429, "this device has too many open requests; try later")
        if await self.store.count_open(now, source_ip) >= self.settings.max_pending_per_ip:
            raise ProtocolError(429, "too many open requests from your address; try later")
        my_nonce = new_nonce()
        reply_port = body.get("reply_port")
        host = f"[{source_ip}]" if ":" in source_ip else source_ip
        row = {
            "id": new_request_id(),
            "direction": "incoming",
            "kind": body["kind"],
            "peer_id": opened.sender_id,
            "peer_name": clean_text(body["name"], NAME_MAX) or "unnamed",
            "peer_key": opened.sender_key,
            "peer_url": f"https://{host}:{reply_port}" if reply_port else None,
            "source_ip": source_ip,
            "asks": asks,
            "state": "handshake",
            "code": None,
            "my_nonce": my_nonce,
            "peer_nonce": None,
            "commitment": commitment(self.identity.public_der, opened.sender_key, my_nonce),
            "created_at": now,
            # until revealed, only the reveal window: a real requester reveals at once, and an
            # open that is never revealed must not hold the caps for request_ttl
            "expires_at": now + min(self.settings.reveal_window, self.settings.request_ttl),
            "decided_at": None,
            "reason": None,
        }
        for old_id in await self.store.insert_request(row, supersede=True):
            old = await self.store.get_request(old_id)
            if old is not None and old["code"] is not None:
                await self.events.request_decided(old, "superseded")
        return {"request_id": row["id"], "commitment": row["commitment"],
                "expires_at": row["expires_at"]}

    async def _own_incoming(self, opened: Opened) -> dict[str, Any]:
        row = await self.store.get_request(opened.body["request_id"])
        if row is None or row["direction"] != "incoming" or row["peer_id"] != opened.sender_id:
            raise ProtocolError(404, "no such request")
        return row

    async def handle_reveal(self, opened: Opened) -> dict[str, Any]:
        row = await self._own_incoming(opened)
        if row["state"] != "handshake":
            raise ProtocolError(409, f"request is {row['state']}")
        code = verification_code(
            opened.sender_key, self.identity.public_der, opened.body["nonce"], row["my_nonce"]
        )
        now = time.time()
        expires_at = now + self.settings.request_ttl
        if not await self.store.reveal_request(row["id"], code, opened.body["nonce"], now,
                                               expires_at):
            raise ProtocolError(409, "request is no longer open (its reveal window closed); "
                                     "open a new one")
        await self.events.publish("request-received", {
            "request_id": row["id"], "kind": row["kind"], "peer_id": row["peer_id"],
            "peer_name": row["peer_name"], "expires_at": expires_at,
        })
        return {"request_id": row["id"], "nonce": row["my_nonce"], "expires_at": expires_at}

    async def handle_status(self, opened: Opened) -> dict[str, Any]:
        await self.sweep()
        row = await self._own_incoming(opened)
        return {"request_id": row["id"], "state": row["state"], "decided_at": row["decided_at"]}

    # ------------------------------------------------------------------ the local user decides

    async def decide(
        self, request_id: str, accept: bool, selection: dict[str, Any] | None = None,
        expected_hash: str | None = None, reason: str | None = None,
    ) -> dict[str, Any]:
        """`reason`: the user's note for this device's records; the peer is not told it."""
        await self.sweep()
        row = await self.store.get_request(request_id)
        if row is None or never_revealed(row):
            raise ApiError(404, f"no request with ID {request_id!r}")
        if expected_hash is not None and expected_hash != shown_hash(
                row["id"], row["kind"], row["asks"], row["code"]):
            raise ApiError(409, "the request is not the one that was shown; look at it again")
        if row["direction"] != "incoming":
            raise ApiError(409, "only the receiving device decides a request")
        if row["state"] != "pending":
            raise ApiError(409, f"request is already {row['state']}")
        now = time.time()
        decision = "accepted" if accept else "rejected"
        device = device_from_request(row, selection) if accept else None
        if not await self.store.decide(request_id, decision, now, selection, device, reason):
            latest = await self.store.get_request(request_id)
            state = latest["state"] if latest else "gone"
            raise ApiError(409, f"request is already {state}")
        row = await self.store.get_request(request_id)
        assert row is not None
        await self.events.request_decided(row, decision)
        if device is not None:
            await self.events.device_added(device)
        if row["peer_url"]:
            self.channel.push(row["peer_url"], row["peer_id"], "request.decided", {
                "request_id": row["id"], "state": decision,
            })
        return request_view(row)
