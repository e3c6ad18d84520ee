import asyncio
import sqlite3
import time

import pytest

from parallalx_jupyter.store import SCHEMA_VERSION, Store, StoreError


def _request(rid, peer="P" * 52, state="pending", ttl=60.0):
    now = time.time()
    return {
        "id": rid, "direction": "incoming", "kind": "invite", "peer_id": peer,
        "peer_name": "peer", "peer_key": b"k", "peer_url": None, "source_ip": "127.0.0.1",
        "asks": {"purpose": "x"}, "state": state, "code": "123456", "my_nonce": "00",
        "peer_nonce": None, "commitment": None, "created_at": now, "expires_at": now + ttl,
        "decided_at": None, "reason": None,
    }


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "db.sqlite3")
    yield s
    s.close()


def test_wal_mode_and_schema_version(store):
    assert store.schema_version == SCHEMA_VERSION
    mode = store.run_sync(lambda c: c.execute("PRAGMA journal_mode").fetchone())
    assert mode["journal_mode"] == "wal"


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "db.sqlite3"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="newer"):
        Store(path)


async def test_nonces_are_single_use_across_reopen(tmp_path):
    s = Store(tmp_path / "db.sqlite3")
    assert await s.use_nonce("A", "n1", time.time() + 60)
    assert not await s.use_nonce("A", "n1", time.time() + 60)
    s.close()
    s = Store(tmp_path / "db.sqlite3")
    assert not await s.use_nonce("A", "n1", time.time() + 60)
    s.close()


async def test_one_open_request_per_sender(store):
    await store.insert_request(_request("r1"), supersede=True)
    superseded = await store.insert_request(_request("r2"), supersede=True)
    assert superseded == ["r1"]
    open_rows = await store.list_requests(states=("pending",))
    assert [r["id"] for r in open_rows] == ["r2"]


async def test_concurrent_decisions_end_in_one(store):
    await store.insert_request(_request("r1"))
    results = await asyncio.gather(
        store.decide("r1", "accepted", time.time()), store.decide("r1", "rejected", time.time())
    )
    assert sorted(results) == [False, True]
    row = await store.get_request("r1")
    assert row["state"] == ("accepted" if results[0] else "rejected")


async def test_expired_requests_cannot_be_decided_and_are_swept(store):
    await store.insert_request(_request("r1", ttl=-1))
    assert not await store.decide("r1", "accepted", time.time())
    swept = await store.expire_requests(time.time())
    assert [r["id"] for r in swept] == ["r1"]
    assert (await store.get_request("r1"))["state"] == "expired"
