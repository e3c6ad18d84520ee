"""Signed messages between devices, both ways (see docs/protocol.md, "Messages").

Outgoing: seal a message, send it, check that the signed answer is the peer's answer to it.
Incoming (the peer listener): verify an envelope, refuse a replayed nonce, sign the answer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..identity import DeviceIdentity
from ..pairing import Opened, ProtocolError, open_envelope, seal
from ..peer_client import PeerClient, PeerError
from ..store import Store
from .settings import PairingSettings
from .tasks import TaskSet

log = logging.getLogger("parallalx_jupyter")

_PATHS = {
    "request.open": "/requests",
    "request.reveal": "/requests/{request_id}/reveal",
    "request.status": "/requests/{request_id}/status",
}


class PeerChannel:
    def __init__(self, identity: DeviceIdentity, store: Store, settings: PairingSettings,
                 tasks: TaskSet) -> None:
        self.identity = identity
        self.store = store
        self.settings = settings
        self.tasks = tasks
        self.peers = PeerClient()

    # ------------------------------------------------------------------ outgoing

    async def exchange(
        self, base: str, peer_id: str, msg_type: str, body: dict[str, Any], path: str | None = None
    ) -> Opened:
        """Send a signed message and verify the signed response is the peer's answer to it."""
        envelope = seal(self.identity, msg_type, peer_id, body, time.time())
        if path is None:
            path = _PATHS.get(msg_type, "/notify").format(request_id=body.get("request_id"))
        raw = await self.peers.call(base, path, envelope)
        try:
            opened = open_envelope(
                raw, receiver_id=self.identity.device_id, now=time.time(),
                skew=self.settings.clock_skew, expected_type="response", expected_sender=peer_id,
            )
        except ProtocolError as err:
            raise PeerError(f"peer's response failed verification: {err.message}") from None
        if opened.in_reply_to != envelope["payload"]["nonce"]:
            raise PeerError("peer's response answers a different message")
        return opened

    def push(self, base: str, peer_id: str, msg_type: str, body: dict[str, Any]) -> None:
        """Tell a peer news in the background, best effort: the peer also polls, so a failure
        here only delays its news."""
        self.tasks.spawn(self._notify(base, peer_id, msg_type, body))

    async def _notify(self, base: str, peer_id: str, msg_type: str, body: dict[str, Any]) -> None:
        try:
            await self.exchange(base, peer_id, msg_type, body, path="/notify")
        except PeerError as err:
            log.info("could not notify %s: %s", base, err.message)

    # ------------------------------------------------------------------ incoming

    def hello(self) -> dict[str, Any]:
        return {
            "device_id": self.identity.device_id,
            "name": self.settings.device_name,
            "public_key": self.identity.public_b64,
            "protocol": 1,
        }

    def open(self, envelope: Any, expected_type: str | tuple[str, ...]) -> Opened:
        """Verify a message the peer listener received; the type is checked before anything
        else in it, so e.g. a `response` (no body schema) never reaches the signature check."""
        return open_envelope(
            envelope, receiver_id=self.identity.device_id, now=time.time(),
            skew=self.settings.clock_skew, expected_type=expected_type,
        )

    async def check_nonce(self, opened: Opened) -> None:
        keep_until = opened.ts + 2 * self.settings.clock_skew
        if not await self.store.use_nonce(opened.sender_id, opened.nonce, keep_until):
            raise ProtocolError(409, "nonce already used (replay)")

    def respond(self, opened: Opened, body: dict[str, Any]) -> dict[str, Any]:
        return seal(self.identity, "response", opened.sender_id, body, time.time(),
                    in_reply_to=opened.nonce)
