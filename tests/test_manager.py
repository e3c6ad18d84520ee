"""Pairing between devices: both directions, decisions, revoke, restarts.

The devices are `InProcessDevice`s (DeviceManager and the real peer listener over HTTPS, in this
process); the crash across a restart is also run with real device processes (e2e).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from parallalx_jupyter.devices import DeviceManager, PairingSettings
from parallalx_jupyter.errors import ParallalxError
from parallalx_jupyter.identity import DeviceIdentity
from parallalx_jupyter.local_device import DeviceError, wait_for
from parallalx_jupyter.pairing import commitment, new_nonce, seal
from parallalx_jupyter.store import Store


def _incoming(dev, request_id):
    return next((r for r in dev.api("GET", "requests") if r["id"] == request_id), None)


def _devices(dev):
    return {d["name"]: d for d in dev.api("GET", "devices")}


def test_invite_accept_shows_the_same_code_and_pairs_both_sides(make_inprocess_device):
    a, b = make_inprocess_device("alpha"), make_inprocess_device("bravo")
    sent = a.api("POST", "invitations", {
        "url": b.peer_url, "asks": {"purpose": "train resnet", "nthreads": 2, "gpus": 0},
    })
    assert sent["state"] == "pending" and sent["direction"] == "outgoing"
    got = _incoming(b, sent["id"])
    a_info, b_info = a.api("GET", "device"), b.api("GET", "device")
    # B's user sees who asks, what is asked, the expiry and the code A shows
    assert got["peer"]["name"] == "alpha" and got["peer"]["id"] == a_info["id"]
    assert got["peer"]["id_display"] == a_info["id_display"]
    assert got["asks"]["purpose"] == "train resnet" and got["asks"]["nthreads"] == 2
    assert got["expires_at"] > time.time() + 60
    assert got["code"] == sent["code"] and len(got["code"]) == 6
    assert sent["peer"]["id"] == b_info["id"]

    accepted = b.api("POST", f"requests/{sent['id']}/accept", {})
    assert accepted["state"] == "accepted"
    wait_for(lambda: a.api("GET", f"requests/{sent['id']}")["state"] == "accepted", 15)
    assert _devices(a)["bravo"]["role"] == "worker"
    assert _devices(a)["bravo"]["state"] == "paired"
    assert _devices(b)["alpha"]["role"] == "main"
    assert _devices(b)["alpha"]["grant"]["asks"]["purpose"] == "train resnet"
    with pytest.raises(DeviceError) as err:
        b.api("POST", f"requests/{sent['id']}/reject", {})
    assert err.value.status == 409


def test_reject_is_seen_by_the_requester_and_pairs_nothing(make_inprocess_device):
    a, b = make_inprocess_device("alpha"), make_inprocess_device("bravo")
    sent = a.api("POST", "invitations", {"url": b.peer_url})
    b.api("POST", f"requests/{sent['id']}/reject", {"reason": "not now"})
    wait_for(lambda: a.api("GET", f"requests/{sent['id']}")["state"] == "rejected", 15)
    assert a.api("GET", "devices") == [] and b.api("GET", "devices") == []
    assert b.api("GET", "requests") == []


def test_offer_direction_makes_the_receiver_the_main_device(make_inprocess_device):
    main, helper = make_inprocess_device("main"), make_inprocess_device("helper")
    sent = helper.api("POST", "invitations", {"url": main.peer_url, "kind": "offer"})
    got = _incoming(main, sent["id"])
    assert got["kind"] == "offer" and got["code"] == sent["code"]
    main.api("POST", f"requests/{sent['id']}/accept", {})
    wait_for(lambda: "main" in _devices(helper), 15)
    assert _devices(main)["helper"]["role"] == "worker"
    assert _devices(helper)["main"]["role"] == "main"


def test_revoke_reaches_the_peer(make_inprocess_device):
    a, b = make_inprocess_device("alpha"), make_inprocess_device("bravo")
    sent = a.api("POST", "invitations", {"url": b.peer_url})
    b.api("POST", f"requests/{sent['id']}/accept", {})
    wait_for(lambda: "bravo" in _devices(a), 15)
    a_id = a.api("GET", "device")["id"]
    revoked = b.api("POST", f"devices/{a_id}/revoke")
    assert revoked["state"] == "revoked"
    wait_for(lambda: _devices(a)["bravo"]["state"] == "revoked_by_peer", 15)
    assert _devices(b)["alpha"]["grant"] is None
    with pytest.raises(DeviceError) as err:
        b.api("POST", f"devices/{a_id}/revoke")
    assert err.value.status == 409


@pytest.mark.parametrize("maker, how", [
    ("make_inprocess_device", signal.SIGTERM),
    ("make_inprocess_device", signal.SIGKILL),
    pytest.param("make_device", signal.SIGKILL, marks=pytest.mark.e2e),
], ids=["stop", "crash", "crash-processes"])
def test_restarts_keep_decisions_and_open_requests(request, maker, how):
    """SIGTERM: the device's own shutdown runs; SIGKILL: none of it (in process: `kill()`)."""
    make = request.getfixturevalue(maker)
    a, b, c = make("alpha"), make("bravo"), make("charlie")
    decided = a.api("POST", "invitations", {"url": b.peer_url})
    b.api("POST", f"requests/{decided['id']}/accept", {})
    wait_for(lambda: "bravo" in _devices(a), 15)
    open_req = c.api("POST", "invitations", {"url": b.peer_url})

    b.kill() if how == signal.SIGKILL else b.stop()
    a.kill() if how == signal.SIGKILL else a.stop()
    b.start()
    a.start()

    assert _devices(b)["alpha"]["state"] == "paired"
    assert _devices(a)["bravo"]["state"] == "paired"
    still_open = _incoming(b, open_req["id"])
    assert still_open is not None and still_open["code"] == open_req["code"]
    # and it can still be decided after the restart; the requester learns it
    b.api("POST", f"requests/{open_req['id']}/accept", {})
    wait_for(lambda: "bravo" in _devices(c), 15)


def test_expired_requests_are_dropped_across_a_restart(make_inprocess_device):
    a, b = make_inprocess_device("alpha"), make_inprocess_device("bravo", request_ttl=2.0)
    sent = a.api("POST", "invitations", {"url": b.peer_url})
    assert _incoming(b, sent["id"]) is not None
    b.kill()
    time.sleep(2.5)
    b.start()
    assert _incoming(b, sent["id"]) is None
    with pytest.raises(DeviceError) as err:
        b.api("POST", f"requests/{sent['id']}/accept", {})
    assert err.value.status == 409 and "expired" in str(err.value)
    wait_for(lambda: a.api("GET", f"requests/{sent['id']}")["state"] == "expired", 10)


class _HostilePeer:
    """Stands in for the PeerClient: answers as a peer device would, signed with the peer's
    key, but with the given fields in its open and reveal answers (responses have no schema)."""

    def __init__(self, me: DeviceIdentity, peer: DeviceIdentity, opened: dict[str, Any],
                 revealed: dict[str, Any]) -> None:
        self.me, self.peer, self.opened, self.revealed = me, peer, opened, revealed
        self.nonce = new_nonce()

    async def call(self, base: str, path: str, body: Any = None) -> Any:
        if path == "/hello":
            return {"device_id": self.peer.device_id, "name": "peer",
                    "public_key": self.peer.public_b64, "protocol": 1}
        if path == "/requests":
            answer = {"request_id": "r1", "commitment": commitment(
                self.peer.public_der, self.me.public_der, self.nonce), **self.opened}
        else:
            answer = {"request_id": "r1", "nonce": self.nonce, **self.revealed}
        return seal(self.peer, "response", self.me.device_id, answer, time.time(),
                    in_reply_to=body["payload"]["nonce"])

    def close(self) -> None:
        pass


@pytest.mark.parametrize("opened, revealed, status", [
    ({"request_id": "\ud800"}, {}, 502),  # our row's key: SQLite cannot encode it
    ({"request_id": "../../x"}, {}, 502),  # not an ID the API routes could address
    ({}, {"expires_at": 10**400}, None),  # float() of it overflowed
    ({}, {"expires_at": float("nan")}, None),
    ({}, {"expires_at": True}, None),
], ids=["surrogate-id", "path-id", "expiry-int-401-digits", "expiry-NaN", "expiry-bool"])
async def test_hostile_answers_to_our_request_are_refused_or_ignored(tmp_path, opened, revealed,
                                                                    status):
    """What a peer answers is as untrusted as what it sends: a bad answer is a 502 for our
    user, or the field is ignored, never a 500."""
    me = DeviceIdentity.load_or_create(tmp_path / "me")
    peer = DeviceIdentity.load_or_create(tmp_path / "peer")
    store = Store(tmp_path / "db.sqlite3")
    manager = DeviceManager(me, store, PairingSettings(device_name="me"), lambda *a: None)
    manager.peers.close()
    manager.peers = _HostilePeer(me, peer, opened, revealed)  # type: ignore[assignment]
    try:
        if status is not None:
            with pytest.raises(ParallalxError) as err:  # ApiError or PeerError: status + message
                await manager.send_request("https://127.0.0.1:1", "offer")
            assert err.value.status == status
            assert await store.list_requests() == []
        else:
            before = time.time()
            sent = await manager.send_request("https://127.0.0.1:1", "offer")
            assert sent["state"] == "pending"
            assert before < sent["expires_at"] <= time.time() + manager.settings.request_ttl
    finally:
        store.close()
