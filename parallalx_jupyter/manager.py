"""The device manager: pairing flows in both directions as a pure-asyncio object.

Handlers (local REST and the peer listener) stay thin and call into this; it owns the rules
(who may ask what, which state transitions exist, what each side learns) and speaks to storage,
peers and the event logger through the objects it is given.

Request states: `handshake` (opened, code not yet fixed) -> `pending` (code shown, waiting for
the receiving user) -> `accepted` | `rejected` | `expired` | `superseded`. A handshake lives only
`reveal_window` seconds (a real requester reveals within one round trip); it gets `request_ttl`
once revealed. Never-revealed requests are not shown as requests: the user sees their number
(`incomplete_requests` of the device view), so a flood of them is visible, not silent.
Device states: `paired`, `revoked` (by this device), `revoked_by_peer`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .identity import DeviceIdentity, device_id_from_public_der, display_device_id
from .pairing import (
    CLUSTER_SPEC,
    NAME_MAX,
    Opened,
    ProtocolError,
    clean_asks,
    clean_text,
    commitment,
    new_nonce,
    open_envelope,
    seal,
    shown_hash,
    validate,
    verification_code,
)
from .peer_client import PeerClient, PeerError, normalise_peer_url
from .profile import ProfileCache
from .store import Store

if TYPE_CHECKING:
    from .cluster.service import ClusterService

log = logging.getLogger("parallalx_jupyter")

_REQUEST_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")  # what the API routes accept as an ID

Emit = Callable[[str, dict[str, Any]], None]
ResolvePython = Callable[[dict[str, Any]], Awaitable[str]]


async def _server_python(selection: dict[str, Any]) -> str:
    return sys.executable


class ApiError(Exception):
    """An error for the local API: HTTP status plus a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class PairingSettings:
    device_name: str
    request_ttl: float = 600.0
    # seconds an opened request may wait for its reveal: unrevealed opens stop counting toward
    # max_pending / max_pending_per_ip / one-per-sender after this, so they cannot lock a
    # real device out for request_ttl
    reveal_window: float = 30.0
    clock_skew: float = 300.0
    max_pending: int = 50
    max_pending_per_ip: int = 5
    poll_interval: float = 2.0
    peer_port: int = 0


def _role_for(kind: str, direction: str) -> str:
    """The role the *peer* takes once a request is accepted. An invite asks the receiver to run
    workers for the sender; an offer is the reverse."""
    sender_is_main = kind == "invite"
    peer_is_sender = direction == "incoming"
    return "main" if sender_is_main == peer_is_sender else "worker"


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
        self.emit = emit
        self.profile = profile or ProfileCache()
        self.peers = PeerClient()
        self.peer_urls: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.cluster: ClusterService | None = None
        self.resolve_python: ResolvePython = _server_python

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the background loop (expiry, outcome polling, nonce purge)."""
        if self._loop_task is None:
            self._loop_task = asyncio.ensure_future(self._background())
            self._spawn(self.profile.get())  # warm the accelerator facts off the IOLoop
            if self.cluster is not None:
                self.cluster.exchange_for = self.cluster_exchange  # certificate renewal
                self._spawn(self.cluster.restore())

    async def stop(self) -> None:
        tasks = list(self._tasks)
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None
        if self.cluster is not None:
            await self.cluster.close()
        self.peers.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _background(self) -> None:
        idle = 0
        while True:
            try:
                await self.sweep()
                busy = await self._poll_outgoing()
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
        now = time.time()
        for row in await self.store.expire_requests(now):
            if not self._never_revealed(row):  # nobody saw those: no event, they are counted
                self._emit_decided(row, "expired")
        await self.store.purge_nonces(now)
        await self.store.purge_incomplete(now - self._incomplete_horizon())

    def _incomplete_horizon(self) -> float:
        """How far back never-revealed requests are counted (and kept): as long as a real
        request would have been shown."""
        return max(self.settings.request_ttl, self.settings.reveal_window)

    @staticmethod
    def _never_revealed(row: dict[str, Any]) -> bool:
        return row["direction"] == "incoming" and row["code"] is None

    async def incomplete_count(self) -> int:
        """Incoming requests opened in the last `request_ttl` seconds whose reveal window ended
        without a reveal: a failed pairing, or someone holding this device's caps."""
        now = time.time()
        return await self.store.count_incomplete(now, now - self._incomplete_horizon())

    # ------------------------------------------------------------------ views

    async def device_info(self, refresh: bool = False) -> dict[str, Any]:
        profile = await self.profile.get(refresh=refresh) if refresh else self.profile.peek()
        return {
            "id": self.identity.device_id,
            "id_display": self.identity.display_id,
            "name": self.settings.device_name,
            "peer_urls": self.peer_urls,
            "version": __version__,
            "profile": profile,
            "incomplete_requests": await self.incomplete_count(),
        }

    @staticmethod
    def request_view(row: dict[str, Any]) -> dict[str, Any]:
        show_code = row["state"] in ("pending", "accepted")
        return {
            "id": row["id"],
            "direction": row["direction"],
            "kind": row["kind"],
            "state": row["state"],
            "peer": {
                "id": row["peer_id"],
                "id_display": display_device_id(row["peer_id"]),
                "name": row["peer_name"],
                "url": row["peer_url"],
            },
            "asks": row["asks"],
            "code": row["code"] if show_code else None,
            "shown_hash": (shown_hash(row["id"], row["kind"], row["asks"], row["code"])
                           if show_code else None),
            "created_at": row["created_at"],
            "expires_at": row["expires_at"],
            "decided_at": row["decided_at"],
        }

    @staticmethod
    def device_view(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["id"],
            "id_display": display_device_id(row["id"]),
            "name": row["name"],
            "role": row["role"],
            "state": row["state"],
            "peer_url": row["peer_url"],
            "request_id": row["request_id"],
            "paired_at": row["paired_at"],
            "updated_at": row["updated_at"],
            "last_seen": row["last_seen"],
        }

    async def list_requests(
        self, direction: str | None = None, state: str | None = None
    ) -> list[dict[str, Any]]:
        await self.sweep()
        states: tuple[str, ...] | None = None
        if state == "open":
            states = ("pending",)
        elif state and state != "all":
            states = (state,)
        rows = await self.store.list_requests(direction=direction, states=states,
                                              revealed_only=True)
        return [self.request_view(r) for r in rows]

    async def get_request(self, request_id: str) -> dict[str, Any]:
        await self.sweep()
        row = await self.store.get_request(request_id)
        if row is None or self._never_revealed(row):
            raise ApiError(404, f"no request with ID {request_id!r}")
        return self.request_view(row)

    async def list_devices(self) -> list[dict[str, Any]]:
        rows = await self.store.list_devices()
        grants = await self.store.list_grants()
        current = {g["device_id"]: g for g in grants if g["revoked_at"] is None}
        out = []
        for row in rows:
            view = self.device_view(row)
            grant = current.get(row["id"])
            view["grant"] = (
                {"asks": grant["asks"], "selection": grant["selection"]} if grant else None
            )
            out.append(view)
        return out

    async def get_device(self, device_id: str) -> dict[str, Any]:
        for device in await self.list_devices():
            if device["id"] == device_id:
                return device
        raise ApiError(404, f"no paired device with ID {device_id!r}")

    # ------------------------------------------------------------------ local decisions

    async def decide(
        self, request_id: str, accept: bool, selection: dict[str, Any] | None = None,
        expected_hash: str | None = None,
    ) -> dict[str, Any]:
        await self.sweep()
        row = await self.store.get_request(request_id)
        if row is None or self._never_revealed(row):
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
        device = None
        if accept:
            device = {
                "id": row["peer_id"],
                "name": row["peer_name"],
                "public_key": row["peer_key"],
                "peer_url": row["peer_url"],
                "role": _role_for(row["kind"], "incoming"),
                "request_id": row["id"],
                "asks": row["asks"],
                "selection": selection or {},
            }
        if not await self.store.decide(request_id, decision, now, selection, device):
            latest = await self.store.get_request(request_id)
            state = latest["state"] if latest else "gone"
            raise ApiError(409, f"request is already {state}")
        row = await self.store.get_request(request_id)
        assert row is not None
        self._emit_decided(row, decision)
        if device is not None:
            self._paired(device)
        if row["peer_url"]:
            self._spawn(self._notify(row["peer_url"], row["peer_id"], "request.decided", {
                "request_id": row["id"], "state": decision,
            }))
        return self.request_view(row)

    async def revoke(self, device_id: str) -> dict[str, Any]:
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
        self.emit("device-revoked", {"peer_id": device_id, "peer_name": row["name"], "by": "self"})
        if row["peer_url"] and row["state"] == "paired":
            self._spawn(self._notify(row["peer_url"], device_id, "device.revoked", {}))
        await self._unshare(row)
        return await self.get_device(device_id)

    # ------------------------------------------------------------------ outgoing requests

    async def send_request(
        self, url: str, kind: str = "invite", asks: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Open a request on a peer and run commit-then-reveal; returns our outgoing request with
        the verification code the user compares with the peer's screen."""
        if kind not in ("invite", "offer"):
            raise ApiError(400, "kind must be 'invite' or 'offer'")
        try:
            base = normalise_peer_url(url)
            clean = clean_asks(asks or {})
        except PeerError as err:
            raise ApiError(err.status, err.message) from None
        except ProtocolError as err:
            raise ApiError(400, err.message) from None
        cluster_info = None
        if kind == "invite" and self.cluster is not None:
            from .cluster.service import ClusterError

            try:
                cluster_info = await self.cluster.offer_info()
            except ClusterError as err:
                raise ApiError(err.status, err.message) from None
        try:
            hello = await self.peers.call(base, "/hello")
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
            opened = await self._exchange(base, peer_id, "request.open", open_body)
            request_id = opened.body.get("request_id")
            their_commit = opened.body.get("commitment")
            # the peer's response has no schema: its ID becomes our row's key and a URL path
            # segment (a lone surrogate in it would make SQLite raise: a 500 here)
            if not (isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id)
                    and isinstance(their_commit, str)):
                raise PeerError("peer sent an incomplete response")
            my_nonce = new_nonce()
            revealed = await self._exchange(base, peer_id, "request.reveal", {
                "request_id": request_id, "nonce": my_nonce,
            })
        except PeerError as err:
            raise ApiError(err.status, err.message) from None
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
        self._wake.set()
        return self.request_view(row)

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

    async def _exchange(
        self, base: str, peer_id: str, msg_type: str, body: dict[str, Any], path: str | None = None
    ) -> Opened:
        """Send a signed message and verify the signed response is the peer's answer to it."""
        envelope = seal(self.identity, msg_type, peer_id, body, time.time())
        paths = {
            "request.open": "/requests",
            "request.reveal": f"/requests/{body.get('request_id')}/reveal",
            "request.status": f"/requests/{body.get('request_id')}/status",
        }
        raw = await self.peers.call(base, path or paths.get(msg_type, "/notify"), envelope)
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

    async def _notify(self, base: str, peer_id: str, msg_type: str, body: dict[str, Any]) -> None:
        """Best-effort push; the peer also polls, so a failure here only delays its news."""
        try:
            await self._exchange(base, peer_id, msg_type, body, path="/notify")
        except PeerError as err:
            log.info("could not notify %s: %s", base, err.message)

    async def _poll_outgoing(self) -> bool:
        rows = await self.store.list_requests(direction="outgoing", states=("pending",))
        for row in rows:
            await self._poll_one(row)
        return bool(rows)

    async def _poll_one(self, row: dict[str, Any]) -> None:
        try:
            opened = await self._exchange(
                row["peer_url"], row["peer_id"], "request.status", {"request_id": row["id"]}
            )
        except PeerError:
            return
        state = opened.body.get("state")
        if state in ("accepted", "rejected", "expired", "superseded"):
            await self._record_outcome(row, state)

    async def _record_outcome(self, row: dict[str, Any], state: str) -> None:
        device = None
        if state == "accepted":
            device = {
                "id": row["peer_id"], "name": row["peer_name"], "public_key": row["peer_key"],
                "peer_url": row["peer_url"], "role": _role_for(row["kind"], "outgoing"),
                "request_id": row["id"], "asks": row["asks"],
            }
        if await self.store.record_outcome(row["id"], state, time.time(), device):
            self._emit_decided(row, state)
            if device is not None:
                self._paired(device)

    # ------------------------------------------------------------------ peer listener side

    async def check_nonce(self, opened: Opened) -> None:
        keep_until = opened.ts + 2 * self.settings.clock_skew
        if not await self.store.use_nonce(opened.sender_id, opened.nonce, keep_until):
            raise ProtocolError(409, "nonce already used (replay)")

    def respond(self, opened: Opened, body: dict[str, Any]) -> dict[str, Any]:
        return seal(self.identity, "response", opened.sender_id, body, time.time(),
                    in_reply_to=opened.nonce)

    def hello(self) -> dict[str, Any]:
        return {
            "device_id": self.identity.device_id,
            "name": self.settings.device_name,
            "public_key": self.identity.public_b64,
            "protocol": 1,
        }

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
            "id": secrets.token_urlsafe(12),
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
                self._emit_decided(old, "superseded")
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
        self.emit("request-received", {
            "request_id": row["id"], "kind": row["kind"], "peer_id": row["peer_id"],
            "peer_name": row["peer_name"], "expires_at": expires_at,
        })
        return {"request_id": row["id"], "nonce": row["my_nonce"], "expires_at": expires_at}

    async def handle_status(self, opened: Opened) -> dict[str, Any]:
        await self.sweep()
        row = await self._own_incoming(opened)
        return {"request_id": row["id"], "state": row["state"], "decided_at": row["decided_at"]}

    async def handle_notify(self, opened: Opened) -> dict[str, Any]:
        if opened.type == "request.decided":
            row = await self.store.get_request(opened.body["request_id"])
            if row is None or row["direction"] != "outgoing" or row["peer_id"] != opened.sender_id:
                raise ProtocolError(404, "no such request")
            await self._record_outcome(row, opened.body["state"])
            return {"ok": True}
        if opened.type == "device.revoked":
            device = await self.store.get_device(opened.sender_id)
            if device is None:
                raise ProtocolError(404, "not paired")
            if await self.store.set_device_state(opened.sender_id, "revoked_by_peer", time.time()):
                self.emit("device-revoked", {
                    "peer_id": opened.sender_id, "peer_name": device["name"], "by": "peer"
                })
                await self._unshare(device)
            return {"ok": True}
        raise ProtocolError(400, f"'{opened.type}' cannot be sent to /notify")

    async def handle_join(self, opened: Opened) -> dict[str, Any]:
        """A paired worker device asks for its cluster certificate."""
        from .cluster.service import ClusterError

        device = await self.store.get_device(opened.sender_id)
        if device is None or device["state"] != "paired":
            # the accept may have raced its own notification: ask the peer now
            for row in await self.store.list_requests(direction="outgoing", states=("pending",)):
                if row["peer_id"] == opened.sender_id:
                    await self._poll_one(row)
            device = await self.store.get_device(opened.sender_id)
        if device is None or device["state"] != "paired" or device["role"] != "worker":
            raise ProtocolError(403, "not a paired worker device of this main device")
        request = await self.store.get_request(device["request_id"] or "")
        if request is None or opened.body["shown_hash"] != shown_hash(
                request["id"], request["kind"], request["asks"], request["code"]):
            raise ProtocolError(403, "the certificate request is not bound to the accepted request")
        if self.cluster is None:
            raise ProtocolError(503, "this device cannot run a cluster")
        try:
            await self.cluster.ensure_started()
            return self.cluster.sign_join(opened.sender_id, opened.body["csr"])
        except ClusterError as err:
            raise ProtocolError(err.status if err.status < 500 else 503, err.message) from None

    # ------------------------------------------------------------------ cluster hooks

    def _paired(self, device: dict[str, Any]) -> None:
        self.emit("device-added", {
            "peer_id": device["id"], "peer_name": device["name"], "role": device["role"]
        })
        if device["role"] == "main" and self.cluster is not None and device["peer_url"]:
            self._spawn(self.join_main(device["id"]))

    async def join_main(self, main_id: str) -> None:
        """Serve a main device: certificate, environment, worker (see ClusterService.join)."""
        assert self.cluster is not None
        device = await self.store.get_device(main_id)
        grants = [g for g in await self.store.list_grants(main_id) if g["revoked_at"] is None]
        if device is None or device["state"] != "paired" or not grants:
            return
        grant = grants[-1]
        exchange = await self.cluster_exchange(main_id)
        if exchange is None:
            return
        try:
            python = await self.resolve_python(grant["selection"] or {})
        except Exception as err:
            self.cluster._set_join(main_id, {"state": "failed", "message": str(err)})
            return
        await self.cluster.join(main_id, device["peer_url"], exchange, python, grant["asks"],
                                expected=grant["asks"].get("cluster"))

    async def cluster_exchange(
        self, main_id: str
    ) -> Callable[[dict[str, Any]], Awaitable[dict[str, Any]]] | None:
        """The signed `cluster.join` round trip to a main device we serve, bound to the request
        the user accepted: used to join, and again to renew the worker certificate before it
        expires (ClusterService.renew). None once the device is no longer paired or granted."""
        device = await self.store.get_device(main_id)
        grants = [g for g in await self.store.list_grants(main_id) if g["revoked_at"] is None]
        if device is None or device["state"] != "paired" or not grants:
            return None
        request = await self.store.get_request(device["request_id"])
        if request is None:
            return None
        accepted = shown_hash(request["id"], request["kind"], request["asks"], request["code"])

        async def exchange(body: dict[str, Any]) -> dict[str, Any]:
            body = {**body, "shown_hash": accepted}
            try:
                opened = await self._exchange(device["peer_url"], main_id, "cluster.join", body,
                                              path="/cluster/join")
            except PeerError as err:
                raise ApiError(502, err.message) from None
            return opened.body

        return exchange

    async def _unshare(self, device: dict[str, Any]) -> None:
        """Stop sharing at once: our worker for that main, or that device's worker here."""
        if self.cluster is None:
            return
        if device["role"] == "main":
            await self.cluster.leave(device["id"])
        else:
            await self.cluster.revoke_device(device["id"])

    def open(self, envelope: Any, expected_type: str | tuple[str, ...]) -> Opened:
        """Verify a message the peer listener received; the type is checked before anything
        else in it, so e.g. a `response` (no body schema) never reaches the signature check."""
        return open_envelope(
            envelope, receiver_id=self.identity.device_id, now=time.time(),
            skew=self.settings.clock_skew, expected_type=expected_type,
        )

    def _emit_decided(self, row: dict[str, Any], state: str) -> None:
        self.emit("request-decided", {
            "request_id": row["id"], "direction": row["direction"], "kind": row["kind"],
            "peer_id": row["peer_id"], "peer_name": row["peer_name"], "state": state,
        })
