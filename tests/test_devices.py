"""The device pieces in one process: cluster membership follows the device events."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from parallalx_jupyter.devices import DeviceManager, PairingSettings
from parallalx_jupyter.devices.events import DeviceEvents
from parallalx_jupyter.identity import DeviceIdentity
from parallalx_jupyter.pairing import new_nonce
from parallalx_jupyter.store import Store


class _FakeCluster:
    """Records what the device pieces ask of the cluster service."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.exchange_for: Any = None
        self.joined = asyncio.Event()

    async def join(self, main_id: str, main_url: str, exchange: Any, python: str,
                   limits: dict[str, Any], expected: Any = None,
                   request_id: str | None = None) -> None:
        self.calls.append(("join", main_id))
        self.joined.set()

    def serves_with(self, main_id: str, asks: dict[str, Any]) -> bool:
        return False  # no worker yet: a grant joins

    async def leave(self, main_id: str) -> None:
        self.calls.append(("leave", main_id))

    async def revoke_device(self, device_id: str) -> None:
        self.calls.append(("revoke_device", device_id))

    async def close(self) -> None:
        pass


async def _pair(store: Store, peer: DeviceIdentity, kind: str) -> None:
    """Store an accepted outgoing request and its paired device, as an accept would."""
    now = time.time()
    row = {
        "id": f"r-{kind}", "direction": "outgoing", "kind": kind, "peer_id": peer.device_id,
        "peer_name": kind, "peer_key": peer.public_der, "peer_url": "https://127.0.0.1:1",
        "source_ip": None, "asks": {}, "state": "pending", "code": "123456",
        "my_nonce": new_nonce(), "peer_nonce": new_nonce(), "commitment": "c",
        "created_at": now, "expires_at": now + 600, "decided_at": None, "reason": None,
    }
    await store.insert_request(row, supersede=True)
    # an offer we sent makes the peer the main device; an invite makes it a worker
    device = {"id": peer.device_id, "name": kind, "public_key": peer.public_der,
              "peer_url": row["peer_url"], "role": "main" if kind == "offer" else "worker",
              "request_id": row["id"], "asks": {}}
    assert await store.record_outcome(row["id"], "accepted", now, device)


@pytest.fixture
async def manager(tmp_path):
    emitted: list[tuple[str, dict[str, Any]]] = []
    store = Store(tmp_path / "db.sqlite3")
    me = DeviceIdentity.load_or_create(tmp_path / "me")
    manager = DeviceManager(me, store, PairingSettings(device_name="me"),
                            lambda name, data: emitted.append((name, data)))
    manager.cluster = _FakeCluster()  # type: ignore[assignment]
    manager.emitted = emitted  # type: ignore[attr-defined]
    yield manager
    await manager.stop()
    store.close()


async def test_publish_emits_first_then_awaits_subscribers_in_order():
    seen: list[str] = []
    events = DeviceEvents(lambda name, data: seen.append(f"emit {name}"))

    async def first(data: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        seen.append("first")

    async def second(data: dict[str, Any]) -> None:
        seen.append("second")

    events.subscribe("device-revoked", first)
    events.subscribe("device-revoked", second)
    await events.publish("device-revoked", {"peer_id": "x"})
    await events.publish("device-added", {"peer_id": "x"})
    assert seen == ["emit device-revoked", "first", "second", "emit device-added"]


async def test_revoke_stops_sharing_through_the_event_before_it_returns(manager, tmp_path):
    worker = DeviceIdentity.load_or_create(tmp_path / "worker")
    await _pair(manager.store, worker, "invite")
    view = await manager.revoke(worker.device_id)
    assert view["state"] == "revoked"
    assert manager.cluster.calls == [("revoke_device", worker.device_id)]
    assert ("device-revoked", {"peer_id": worker.device_id, "peer_name": "invite",
                               "by": "self"}) in manager.emitted


async def test_an_added_main_device_is_joined_and_a_revoked_one_left(manager, tmp_path):
    main = DeviceIdentity.load_or_create(tmp_path / "main")
    await _pair(manager.store, main, "offer")
    await manager.events.device_added(await manager.store.get_device(main.device_id))
    await asyncio.wait_for(manager.cluster.joined.wait(), 10)
    await manager.revoke(main.device_id)
    assert manager.cluster.calls == [("join", main.device_id), ("leave", main.device_id)]


async def test_an_added_worker_device_joins_nothing(manager, tmp_path):
    worker = DeviceIdentity.load_or_create(tmp_path / "worker")
    await _pair(manager.store, worker, "invite")
    await manager.events.device_added(await manager.store.get_device(worker.device_id))
    await asyncio.sleep(0.05)
    assert manager.cluster.calls == []
