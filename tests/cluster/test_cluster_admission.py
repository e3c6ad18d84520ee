"""Admission over real TLS: who may join, who may drive the scheduler, what workers refuse."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys

import cloudpickle
import psutil
import pytest
from cluster_helpers import wait_until
from distributed import Client
from distributed.comm import connect, get_address_host_port
from distributed.core import rpc
from distributed.protocol.pickle import dumps

from parallalx_jupyter.cluster import ClusterCA
from parallalx_jupyter.cluster._guard import DENIED_MARKER

# Lambdas/closures defined here travel by value: the scheduler and the worker cannot import
# this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(90)


def _listening(pid: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def _non_loopback_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == 2 and not a.address.startswith("127."):
                return a.address
    return None


async def test_worker_joins_runs_task_and_listeners_bind_configured_interface(harness):
    sp = await harness.scheduler(host="127.0.0.1")
    dev = harness.device_credentials("DEVA")
    worker_ip = _non_loopback_ipv4() or "127.0.0.1"
    ws = await harness.worker(sp, dev, listen_host=worker_ip, gpus=1, nthreads=2)
    address = ws.status()["address"]
    assert get_address_host_port(address)[0] == worker_ip

    def probe():  # nested: Dask pickles module-level functions by reference
        import os as _os
        import sys as _sys

        return _os.getpid(), "parallalx_jupyter" in _sys.modules

    client = await sp.client()
    try:
        pid, pkg_imported = await client.submit(probe, workers=[address], pure=False)
        assert pid == ws.pid
        assert not pkg_imported  # the worker runs without parallalx_jupyter
        gpu_task = client.submit(lambda: "gpu", resources={"GPU": 1}, pure=False)
        assert await gpu_task == "gpu"
    finally:
        await client.close()

    state = sp.read_state()
    [entry] = state["workers"]["DEVA"]
    assert entry["address"] == address and entry["resources"] == {"GPU": 1}
    assert entry["nthreads"] == 2 and entry["memory_limit"] == 2 * 2**30
    assert state["ca_fingerprint"] == sp.ca_fingerprint
    assert state["http_address"].startswith("http://127.0.0.1:")

    sched = _listening(sp.pid)
    assert sched and all(ip == "127.0.0.1" for ip, _ in sched), sched
    assert state["port"] in {p for _, p in sched}
    worker = _listening(ws.pid)
    tls_port = get_address_host_port(address)[1]
    assert (worker_ip, tls_port) in worker
    # the worker's only other listener is its HTTP server, on loopback
    assert all(ip == "127.0.0.1" for ip, p in worker if p != tls_port), worker


async def test_main_client_drives_scheduler_but_workers_refuse_code_exec(harness, tmp_path):
    sp = await harness.scheduler()
    ws = await harness.worker(sp, harness.device_credentials("DEVA"))
    address = ws.status()["address"]
    client = await sp.client()
    try:
        assert await client.run_on_scheduler(lambda: 42) == 42  # main client: allowed
        with pytest.raises(Exception, match=DENIED_MARKER):
            await client.run(os.getpid, workers=[address])
        upload = tmp_path / "mod_x.py"
        upload.write_text("X = 1\n")
        with pytest.raises(Exception, match=DENIED_MARKER):
            await client.upload_file(str(upload))
        # even the main client's own cert cannot call them directly on the worker
        conn = sp.security().get_connection_args("client")
        async with rpc(address, connection_args=conn) as r:
            for op in ("run", "run_coroutine", "plugin-add"):
                with pytest.raises(PermissionError, match=DENIED_MARKER):
                    await getattr(r, op)(function=dumps(os.getpid))
            assert await r.ping() == b"pong"
        assert await client.submit(lambda: 7, pure=False) == 7  # the worker still works
    finally:
        await client.close()


async def test_device_certificate_cannot_act_as_client_or_admin(harness):
    sp = await harness.scheduler()
    a = harness.device_credentials("DEVA")
    ws = await harness.worker(sp, a)
    worker_a = ws.status()["address"]
    b = harness.device_credentials("DEVB")  # accepted, signed by the CA, not running
    sec_b = harness.security(b)

    with pytest.raises(Exception, match=DENIED_MARKER):
        await Client(sp.address, security=sec_b, asynchronous=True, timeout=10)

    conn = sec_b.get_connection_args("client")
    async with rpc(sp.address, connection_args=conn) as r:
        for op, kwargs in [
            ("run_function", {"function": dumps(os.getpid)}),
            ("identity", {}),
            ("broadcast", {"msg": {"op": "ping"}}),
            ("retire_workers", {"workers": [worker_a]}),
            ("heartbeat_worker", {"address": worker_a, "now": 0, "metrics": {}}),
            ("register_worker_plugin", {"plugin": b"", "name": "x"}),
            ("connection_stream", {}),
            ("terminate", {}),
        ]:
            with pytest.raises(PermissionError, match=DENIED_MARKER):
                await getattr(r, op)(**kwargs)

    # device B against device A's worker: only data transfer ops
    async with rpc(worker_a, connection_args=sec_b.get_connection_args("worker")) as r:
        assert await r.ping() == b"pong"
        for op in ("free_keys", "gather", "terminate", "run", "get_logs", "update_data"):
            with pytest.raises(PermissionError, match=DENIED_MARKER):
                await getattr(r, op)(keys=[])

    # nothing above disturbed the cluster
    client = await sp.client()
    try:
        assert list((await client.scheduler.identity())["workers"]) == [worker_a]
        assert await client.submit(lambda: 1, pure=False) == 1
    finally:
        await client.close()


async def test_foreign_ca_worker_and_client_are_rejected(harness, tmp_path):
    sp = await harness.scheduler()
    ClusterCA.create(tmp_path / "foreign")
    bad = harness.device_credentials("DEVX", ca_dir=tmp_path / "foreign")
    bad["ca_file"] = str(sp.credentials.ca_file)  # it trusts our CA; we must not trust it
    ws = await harness.worker(sp, bad, join=False, death_timeout=3)

    foreign = harness.security(harness.device_credentials("DEVY", ca_dir=tmp_path / "foreign"))
    with pytest.raises((OSError, asyncio.TimeoutError)):
        await Client(sp.address, security=foreign, asynchronous=True, timeout=3)

    await wait_until(lambda: ws.supervisor.last_exit_code is not None, 20)
    assert (ws.status() or {}).get("state") != "running"
    assert sp.read_state()["workers"] == {}
    await ws.stop()
    assert "TLS handshake failed" in sp.log_path.read_text()


async def test_plain_tcp_and_certless_tls_are_refused(harness):
    sp = await harness.scheduler()
    host, port = get_address_host_port(sp.address)
    with pytest.raises((OSError, asyncio.TimeoutError)):
        await connect(f"tcp://{host}:{port}", timeout=3)

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x00\x00\x00\x00\x00\x00\x00\x08" + b"GET / HTTP/1.0\r\n\r\n")
    await writer.drain()
    try:
        data = await asyncio.wait_for(reader.read(1000), 10)
    except ConnectionResetError:
        data = b""
    assert data == b"" or data[:1] == b"\x15"  # reset/closed, or a TLS alert record
    writer.close()

    # TLS that verifies the scheduler but presents no client certificate
    ctx = ssl.create_default_context(cafile=str(sp.credentials.ca_file))
    ctx.check_hostname = False
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        writer.write(b"x")
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(1), 10)
        assert got == b""  # pragma: no cover - must not be reached
    writer.close()
    assert sp.read_state()["workers"] == {}
