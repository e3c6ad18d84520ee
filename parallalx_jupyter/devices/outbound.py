"""Requests this device sends: open one on a peer (commit-then-reveal, docs/protocol.md), then
learn its outcome by polling the peer or from the peer's `request.decided` push."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..identity import DeviceIdentity, device_id_from_public_der
from ..pairing import (
    NAME_MAX,
    Opened,
    ProtocolError,
    clean_asks,
    clean_text,
    commitment,
    new_nonce,
    verification_code,
)
from ..peer_client import PeerError, normalise_peer_url
from ..store import Store
from .channel import PeerChannel
from .errors import ApiError
from .events import DeviceEvents
from .membership import device_from_request
from .settings import PairingSettings
from .views import request_view

if TYPE_CHECKING:
    from ..cluster.service import ClusterService

_REQUEST_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # what the API routes accept as an ID
_OUTCOMES = ("accepted", "rejected", "expired", "superseded")


class OutboundInvitations:
    """`wake` makes the background loop poll the peers now (a new pending request)."""

    def __init__(
        self,
        identity: DeviceIdentity,
        store: Store,
        settings: PairingSettings,
        events: DeviceEvents,
        channel: PeerChannel,
        wake: Callable[[], None],
    ) -> None:
        self.identity = identity
        self.store = store
        self.settings = settings
        self.events = events
        self.channel = channel
        self.wake = wake
        #: an invite carries this cluster's scheduler port and CA fingerprint
        self.cluster: ClusterService | None = None

    async def send_request(
        self, url: str, kind: str = "invite", asks: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Open a request on a peer and run commit-then-reveal; returns our outgoing request with
        the verification code the user compares with the peer's screen."""
        if kind not in ("invite", "offer"):
            raise ApiError(400, "kind must be 'invite' or 'offer'")
        base = normalise_peer_url(url)  # a bad URL or asks: their own 400
        clean = clean_asks(asks or {})
        cluster_info = None
        if kind == "invite" and self.cluster is not None:
            cluster_info = await self.cluster.offer_info()
        hello = await self.channel.peers.call(base, "/hello")
        peer_key, peer_id, peer_name = self._check_hello(hello)
        if peer_id == self.identity.device_id:
            raise ApiError(400, "that address is this device's own peer listener")
        open_body: dict[str, Any] = {
            "kind": kind,
            "name": self.settings.device_name,
            "asks": clean,
            "reply_port": self.settings.peer_port or None,
        }
        if cluster_info is not None:
            open_body["cluster"] = cluster_info
            clean = {**clean, "cluster": cluster_info}
        opened = await self.channel.exchange(base, peer_id, "request.open", open_body)
        request_id = opened.body.get("request_id")
        their_commit = opened.body.get("commitment")
        # the peer's response has no schema: its ID becomes our row's key and a URL path
        # segment (a lone surrogate in it would make SQLite raise: a 500 here)
        if not (isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id)
                and isinstance(their_commit, str)):
            raise PeerError("peer sent an incomplete response")
        my_nonce = new_nonce()
        revealed = await self.channel.exchange(base, peer_id, "request.reveal", {
            "request_id": request_id, "nonce": my_nonce,
        })
        their_nonce = revealed.body.get("nonce")
        if not isinstance(their_nonce, str) or len(their_nonce) != 64:
            raise ApiError(502, "peer sent an incomplete reveal")
        try:
            ok = commitment(peer_key, self.identity.public_der, their_nonce) == their_commit
        except ValueError:
            ok = False
        if not ok:
            raise ApiError(
                502, "peer's nonce does not match its commitment: possible man in the middle; "
                     "the request was abandoned"
            )
        code = verification_code(self.identity.public_der, peer_key, my_nonce, their_nonce)
        now = time.time()
        expires = revealed.body.get("expires_at")
        expires_at = now + self.settings.request_ttl
        # the peer's own expiry, if it is a sane time: a huge integer would overflow float()
        # and NaN would win no comparison
        if isinstance(expires, int | float) and not isinstance(expires, bool) and (
                0 <= expires < expires_at):
            expires_at = float(expires)
        row = {
            "id": request_id, "direction": "outgoing", "kind": kind, "peer_id": peer_id,
            "peer_name": peer_name, "peer_key": peer_key, "peer_url": base, "source_ip": None,
            "asks": clean, "state": "pending", "code": code, "my_nonce": my_nonce,
            "peer_nonce": their_nonce, "commitment": their_commit, "created_at": now,
            "expires_at": expires_at, "decided_at": None, "reason": None,
        }
        existing = await self.store.get_request(request_id)
        if existing is not None:
            raise ApiError(409, "peer reused a request ID; try again")
        await self.store.insert_request(row, supersede=True)
        self.wake()
        return request_view(row)

    def _check_hello(self, hello: Any) -> tuple[bytes, str, str]:
        if not isinstance(hello, dict):
            raise PeerError("peer sent an invalid hello")
        try:
            key = base64.b64decode(str(hello.get("public_key", "")), validate=True)
        except ValueError:
            raise PeerError("peer sent an invalid public key") from None
        peer_id = hello.get("device_id")
        if not key or device_id_from_public_der(key) != peer_id:
            raise PeerError("peer's public key does not match its device ID")
        return key, str(peer_id), clean_text(str(hello.get("name", "")), NAME_MAX) or "unnamed"

    # ------------------------------------------------------------------ outcomes

    async def poll_pending(self, peer_id: str | None = None) -> bool:
        """Ask the peers of our pending requests (or only `peer_id`) for their outcome; True
        when there were any to ask about."""
        rows = await self.store.list_requests(direction="outgoing", states=("pending",))
        rows = [r for r in rows if peer_id is None or r["peer_id"] == peer_id]
        for row in rows:
            await self._poll_one(row)
        return bool(rows)

    async def _poll_one(self, row: dict[str, Any]) -> None:
        try:
            opened = await self.channel.exchange(
                row["peer_url"], row["peer_id"], "request.status", {"request_id": row["id"]}
            )
        except PeerError:
            return
        state = opened.body.get("state")
        if state in _OUTCOMES:
            await self._record_outcome(row, state)

    async def handle_decided(self, opened: Opened) -> dict[str, Any]:
        """The peer listener got `request.decided`: the peer pushed its user's decision."""
        row = await self.store.get_request(opened.body["request_id"])
        if row is None or row["direction"] != "outgoing" or row["peer_id"] != opened.sender_id:
            raise ProtocolError(404, "no such request")
        await self._record_outcome(row, opened.body["state"])
        return {"ok": True}

    async def _record_outcome(self, row: dict[str, Any], state: str) -> None:
        device = device_from_request(row) if state == "accepted" else None
        if await self.store.record_outcome(row["id"], state, time.time(), device):
            await self.events.request_decided(row, state)
            if device is not None:
                await self.events.device_added(device)
