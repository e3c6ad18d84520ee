"""All persistent state of a device, in one SQLite database in WAL mode under `home`.

Every call runs on one dedicated thread, so the IOLoop never waits on disk and writes are
serialised without extra locks: a decision is a single conditional UPDATE, which is what makes
a concurrent accept and reject end in exactly one decision. The schema version lives in
`PRAGMA user_version`; `MIGRATIONS[i]` upgrades version i to i+1.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

MIGRATIONS: list[str] = [
    """
    CREATE TABLE requests (
        id TEXT PRIMARY KEY,
        direction TEXT NOT NULL CHECK (direction IN ('incoming', 'outgoing')),
        kind TEXT NOT NULL CHECK (kind IN ('invite', 'offer')),
        peer_id TEXT NOT NULL,
        peer_name TEXT NOT NULL,
        peer_key BLOB NOT NULL,
        peer_url TEXT,
        source_ip TEXT,
        asks TEXT NOT NULL,
        state TEXT NOT NULL,
        code TEXT,
        my_nonce TEXT,
        peer_nonce TEXT,
        commitment TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        decided_at REAL,
        reason TEXT
    );
    CREATE INDEX requests_state ON requests (state, expires_at);
    CREATE INDEX requests_peer ON requests (peer_id, direction);
    CREATE TABLE decisions (
        request_id TEXT PRIMARY KEY REFERENCES requests (id),
        decision TEXT NOT NULL,
        decided_at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        public_key BLOB NOT NULL,
        peer_url TEXT,
        role TEXT NOT NULL CHECK (role IN ('worker', 'main')),
        state TEXT NOT NULL,
        request_id TEXT,
        paired_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_seen REAL
    );
    CREATE TABLE grants (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        device_id TEXT NOT NULL REFERENCES devices (id),
        request_id TEXT NOT NULL,
        asks TEXT NOT NULL,
        selection TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE nonces (
        sender_id TEXT NOT NULL,
        nonce TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (sender_id, nonce)
    );
    """,
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        workload TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT NOT NULL DEFAULT '{}',
        progress TEXT NOT NULL DEFAULT '{}',
        loss_history TEXT NOT NULL DEFAULT '[]',
        error TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE INDEX jobs_created ON jobs (created_at);
    """,
    """
    ALTER TABLE jobs ADD COLUMN output TEXT NOT NULL DEFAULT '[]';
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)
OPEN_STATES = ("handshake", "pending")
REQUEST_JSON_FIELDS = ("asks",)


def _row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    out = {col[0]: value for col, value in zip(cursor.description, row, strict=True)}
    for field in ("asks", "detail", "selection", "owner", "progress", "loss_history", "output"):
        if isinstance(out.get(field), str):
            out[field] = json.loads(out[field])
    return out


class StoreError(Exception):
    """The database is newer than this code or otherwise unusable."""


class Store:
    """The device's database. Use the async methods from the IOLoop; `*_sync` only in tests."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="parallalx-store")
        self._local = threading.local()
        self._conn: sqlite3.Connection | None = None
        self._executor.submit(self._open).result()

    # -- plumbing --

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.row_factory = _row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        version = conn.execute("PRAGMA user_version").fetchone()["user_version"]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this parallalx "
                f"({SCHEMA_VERSION}); upgrade parallalx-jupyter"
            )
        for target in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target + 1}")
                conn.execute("COMMIT")
            except Exception:
                conn.execute("ROLLBACK")
                raise
        self._conn = conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        assert conn is not None, "store is closed"
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._tx, fn)

    def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._executor.submit(self._tx, fn).result()

    def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)

    @property
    def schema_version(self) -> int:
        return self.run_sync(lambda c: c.execute("PRAGMA user_version").fetchone()["user_version"])

    # -- nonces --

    async def use_nonce(self, sender_id: str, nonce: str, expires_at: float) -> bool:
        """Record a nonce; False when it was seen before (a replay)."""

        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO nonces (sender_id, nonce, expires_at) VALUES (?, ?, ?)",
                (sender_id, nonce, expires_at),
            )
            return cur.rowcount == 1

        return await self._run(fn)

    async def purge_nonces(self, now: float) -> int:
        return await self._run(
            lambda c: c.execute("DELETE FROM nonces WHERE expires_at < ?", (now,)).rowcount
        )

    # -- requests --

    async def insert_request(self, request: dict[str, Any], supersede: bool = False) -> list[str]:
        """Insert a request; with `supersede`, older open requests from the same peer in the same
        direction are closed first (one pending request per sender). Returns superseded IDs.
        One past its expiry is left for the sweep to mark expired (an unrevealed one then counts
        as incomplete): it no longer holds the sender's place."""

        def fn(c: sqlite3.Connection) -> list[str]:
            superseded: list[str] = []
            if supersede:
                rows = c.execute(
                    "SELECT id FROM requests WHERE peer_id = ? AND direction = ? AND state IN "
                    "('handshake', 'pending') AND expires_at >= ?",
                    (request["peer_id"], request["direction"], request["created_at"]),
                ).fetchall()
                superseded = [r["id"] for r in rows]
                c.executemany(
                    "UPDATE requests SET state = 'superseded', decided_at = ? WHERE id = ?",
                    [(request["created_at"], rid) for rid in superseded],
                )
            row = dict(request)
            row["asks"] = json.dumps(row["asks"])
            cols = ", ".join(row)
            marks = ", ".join("?" for _ in row)
            c.execute(f"INSERT INTO requests ({cols}) VALUES ({marks})", tuple(row.values()))
            return superseded

        return await self._run(fn)

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        return await self._run(
            lambda c: c.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        )

    async def list_requests(
        self, direction: str | None = None, states: tuple[str, ...] | None = None,
        revealed_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Newest first, at most 500. `revealed_only` leaves out incoming requests that never
        got a code (opened, never revealed): in SQL, so a flood of them cannot push the real
        ones out of the limit."""
        sql = "SELECT * FROM requests WHERE 1=1"
        args: list[Any] = []
        if revealed_only:
            sql += " AND NOT (direction = 'incoming' AND code IS NULL)"
        if direction:
            sql += " AND direction = ?"
            args.append(direction)
        if states:
            sql += f" AND state IN ({', '.join('?' for _ in states)})"
            args.extend(states)
        sql += " ORDER BY created_at DESC LIMIT 500"
        return await self._run(lambda c: c.execute(sql, args).fetchall())

    async def update_request(
        self, request_id: str, fields: dict[str, Any], only_if_state: tuple[str, ...] = ()
    ) -> bool:
        """Update fields; with `only_if_state`, only while the request is in one of those states
        (the compare-and-set that makes state transitions race-free)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        args: list[Any] = [json.dumps(v) if k in REQUEST_JSON_FIELDS else v for k, v in
                           fields.items()]
        sql = f"UPDATE requests SET {sets} WHERE id = ?"
        args.append(request_id)
        if only_if_state:
            sql += f" AND state IN ({', '.join('?' for _ in only_if_state)})"
            args.extend(only_if_state)
        return await self._run(lambda c: c.execute(sql, args).rowcount == 1)

    async def decide(
        self, request_id: str, decision: str, now: float, detail: dict[str, Any] | None = None,
        device: dict[str, Any] | None = None, reason: str | None = None,
    ) -> bool:
        """Record a decision on a pending request (with the user's note, `reason`), and the
        resulting paired device, atomically. False when the request was no longer pending
        (someone else decided first)."""

        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE requests SET state = ?, decided_at = ?, reason = ? WHERE id = ? "
                "AND state = 'pending' AND expires_at >= ?",
                (decision, now, reason, request_id, now),
            )
            if cur.rowcount != 1:
                return False
            c.execute(
                "INSERT INTO decisions (request_id, decision, decided_at, detail) "
                "VALUES (?, ?, ?, ?)",
                (request_id, decision, now, json.dumps(detail or {})),
            )
            if device is not None:
                _upsert_device(c, device, now)
            return True

        return await self._run(fn)

    async def record_outcome(
        self, request_id: str, state: str, now: float, device: dict[str, Any] | None = None
    ) -> bool:
        """The requester's side learns the peer's decision; idempotent for repeated news."""

        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE requests SET state = ?, decided_at = ? WHERE id = ? AND direction = "
                "'outgoing' AND state IN ('handshake', 'pending')",
                (state, now, request_id),
            )
            if cur.rowcount != 1:
                return False
            c.execute(
                "INSERT OR IGNORE INTO decisions (request_id, decision, decided_at) "
                "VALUES (?, ?, ?)",
                (request_id, state, now),
            )
            if device is not None:
                _upsert_device(c, device, now)
            return True

        return await self._run(fn)

    async def expire_requests(self, now: float) -> list[dict[str, Any]]:
        """Close every open request past its expiry; returns the ones closed now."""

        def fn(c: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = c.execute(
                "SELECT * FROM requests WHERE state IN ('handshake', 'pending') AND expires_at < ?",
                (now,),
            ).fetchall()
            c.executemany(
                "UPDATE requests SET state = 'expired', decided_at = ? WHERE id = ?",
                [(now, r["id"]) for r in rows],
            )
            return rows

        return await self._run(fn)

    async def reveal_request(
        self, request_id: str, code: str, peer_nonce: str, now: float, expires_at: float
    ) -> bool:
        """Fix the code of a request still in its reveal window (handshake, not expired) and
        give it its full lifetime; False when it was revealed, superseded or timed out."""
        return await self._run(lambda c: c.execute(
            "UPDATE requests SET state = 'pending', code = ?, peer_nonce = ?, expires_at = ? "
            "WHERE id = ? AND state = 'handshake' AND expires_at >= ?",
            (code, peer_nonce, expires_at, request_id, now),
        ).rowcount == 1)

    async def count_open(self, now: float, source_ip: str | None = None) -> int:
        """Open incoming requests for the caps: past its expiry a request stops counting at
        once, without waiting for the sweep to mark it (an unrevealed one expires after the
        short reveal window, so unrevealed opens cannot hold the caps for long)."""
        sql = "SELECT COUNT(*) AS n FROM requests WHERE direction = 'incoming' AND state IN " \
              "('handshake', 'pending') AND expires_at >= ?"
        args: tuple[Any, ...] = (now,)
        if source_ip is not None:
            sql += " AND source_ip = ?"
            args = (now, source_ip)
        return await self._run(lambda c: c.execute(sql, args).fetchone()["n"])

    async def count_incomplete(self, now: float, since: float) -> int:
        """Incoming requests opened since `since` whose reveal window ended without a reveal
        (expired, or past expiry and not yet swept); superseded ones are not counted, their
        sender came back."""
        return await self._run(lambda c: c.execute(
            "SELECT COUNT(*) AS n FROM requests WHERE direction = 'incoming' AND code IS NULL "
            "AND (state = 'expired' OR (state = 'handshake' AND expires_at < ?)) "
            "AND created_at >= ?",
            (now, since),
        ).fetchone()["n"])

    async def purge_incomplete(self, before: float) -> int:
        """Forget never-revealed incoming requests opened before `before`: nobody saw them and
        they hold nothing to keep, so a steady stream of them cannot grow the database."""
        return await self._run(lambda c: c.execute(
            "DELETE FROM requests WHERE direction = 'incoming' AND code IS NULL "
            "AND state IN ('expired', 'superseded') AND created_at < ? "
            "AND id NOT IN (SELECT request_id FROM decisions)",
            (before,),
        ).rowcount)

    # -- devices and grants --

    async def get_device(self, device_id: str) -> dict[str, Any] | None:
        return await self._run(
            lambda c: c.execute("SELECT * FROM devices WHERE id = ?", (device_id,)).fetchone()
        )

    async def list_devices(self) -> list[dict[str, Any]]:
        return await self._run(
            lambda c: c.execute("SELECT * FROM devices ORDER BY paired_at DESC").fetchall()
        )

    async def set_device_state(
        self, device_id: str, state: str, now: float, only_if: tuple[str, ...] = ("paired",)
    ) -> bool:
        """Move a device to `state` (e.g. revoked) and close its grants; False if it wasn't in
        one of `only_if`."""

        def fn(c: sqlite3.Connection) -> bool:
            marks = ", ".join("?" for _ in only_if)
            cur = c.execute(
                f"UPDATE devices SET state = ?, updated_at = ? WHERE id = ? AND state IN ({marks})",
                (state, now, device_id, *only_if),
            )
            if cur.rowcount != 1:
                return False
            c.execute(
                "UPDATE grants SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
                (now, device_id),
            )
            return True

        return await self._run(fn)

    async def touch_device(self, device_id: str, now: float) -> None:
        await self._run(
            lambda c: c.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device_id))
        )

    # -- jobs (registered by the process that runs them: a kernel, the CLI, the server) --

    async def insert_job(self, job: dict[str, Any]) -> bool:
        """False when a job with this ID exists already."""

        def fn(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "INSERT OR IGNORE INTO jobs (id, workload, name, state, owner, created_at, "
                "updated_at) VALUES (:id, :workload, :name, :state, :owner, :now, :now)",
                {**job, "owner": json.dumps(job.get("owner") or {})},
            )
            return cur.rowcount == 1

        return await self._run(fn)

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        return await self._run(
            lambda c: c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        )

    async def list_jobs(self, limit: int = 200) -> list[dict[str, Any]]:
        return await self._run(
            lambda c: c.execute(
                "SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT ?", (limit,)
            ).fetchall()
        )

    async def modify_job(
        self, job_id: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Read-modify-write one job in one transaction: ``change(row)`` returns the columns to
        set (or None for no change). Returns the row after the change, None if unknown."""

        def fn(c: sqlite3.Connection) -> dict[str, Any] | None:
            row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            updates = change(dict(row))
            if updates:
                cols = ", ".join(f"{k} = ?" for k in updates)
                values = [
                    json.dumps(v) if isinstance(v, (dict, list)) else v for v in updates.values()
                ]
                c.execute(f"UPDATE jobs SET {cols} WHERE id = ?", (*values, job_id))
                row = c.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            return row

        return await self._run(fn)

    async def delete_job(self, job_id: str) -> None:
        await self._run(lambda c: c.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    async def trim_jobs(self, keep: int) -> int:
        """Drop the oldest ended jobs beyond the newest ``keep``."""
        return await self._run(
            lambda c: c.execute(
                "DELETE FROM jobs WHERE finished_at IS NOT NULL AND id NOT IN "
                "(SELECT id FROM jobs ORDER BY created_at DESC LIMIT ?)",
                (keep,),
            ).rowcount
        )

    async def list_grants(self, device_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM grants"
        args: tuple[Any, ...] = ()
        if device_id is not None:
            sql += " WHERE device_id = ?"
            args = (device_id,)
        return await self._run(lambda c: c.execute(sql + " ORDER BY id", args).fetchall())


def _upsert_device(c: sqlite3.Connection, device: dict[str, Any], now: float) -> None:
    """Pair (or re-pair) a device and open a grant for what was accepted."""
    c.execute(
        """
        INSERT INTO devices (id, name, public_key, peer_url, role, state, request_id, paired_at,
                             updated_at, last_seen)
        VALUES (:id, :name, :public_key, :peer_url, :role, 'paired', :request_id, :now, :now, :now)
        ON CONFLICT (id) DO UPDATE SET name = excluded.name, peer_url = excluded.peer_url,
            role = excluded.role, state = 'paired', request_id = excluded.request_id,
            updated_at = excluded.updated_at, last_seen = excluded.last_seen
        """,
        {**{k: device[k] for k in ("id", "name", "public_key", "peer_url", "role", "request_id")},
         "now": now},
    )
    c.execute(
        "UPDATE grants SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL",
        (now, device["id"]),
    )
    c.execute(
        "INSERT INTO grants (device_id, request_id, asks, selection, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (device["id"], device["request_id"], json.dumps(device.get("asks") or {}),
         json.dumps(device.get("selection") or {}), now),
    )
