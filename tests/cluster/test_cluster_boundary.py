"""The device boundary: a paired device's certificate never gets a pickle unpickled elsewhere.

Every attack here is made with real certificates signed by the cluster CA against real
scheduler and worker processes; a marker directory appears wherever an attacker's pickle is
unpickled, so "nothing ran" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from distributed.comm import CommClosedError, connect
from distributed.core import rpc
from distributed.protocol.serialize import Serialize, ToPickle
from evil_worker import Evil

from parallalx_jupyter.cluster import _boundary
from parallalx_jupyter.cluster._guard import DENIED_MARKER
from parallalx_jupyter.cluster.sanitize import DeviceTaskError, RefusedResult, rebuild_exception
from parallalx_jupyter.training.errors import UserCodeError
from parallalx_jupyter.wire import WireError, from_wire, to_wire

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _frames(msg) -> list:
    from distributed.protocol import dumps

    return dumps(msg)


def test_frame_scan_names_what_could_run_code(tmp_path):
    marker = str(tmp_path / "ran")
    plain = _frames({"op": "ping", "x": [1, "a", b"b", {"k": 2.5}]})
    assert _boundary.unsafe_reason(plain, serialized_ok=False) is None
    pickled = _frames({"op": "ping", "x": ToPickle(Evil(marker))})
    assert "pickled" in _boundary.unsafe_reason(pickled, serialized_ok=False)
    assert _boundary.unsafe_reason(pickled, serialized_ok=True) is None  # kept opaque:
    opaque = _boundary.decode_opaque(pickled)
    assert opaque["x"].header["serializer"] == "pickle"  # for the sanitizer to replace
    serialized = _frames({"op": "ping", "x": Serialize(Evil(marker))})
    assert "pickle" in _boundary.unsafe_reason(serialized, serialized_ok=False)
    assert _boundary.unsafe_reason(serialized, serialized_ok=True) is None  # kept opaque
    msgpack_data = _frames({"x": Serialize({"a": [1, 2]})})
    from distributed.protocol import dumps

    safe = dumps({"x": Serialize({"a": (1, 2)})}, serializers=["msgpack"])
    assert _boundary.unsafe_reason(safe, serialized_ok=False) is None
    assert _boundary.unsafe_reason(msgpack_data, serialized_ok=False) is not None  # pickle
    inline = _frames({"x": {"__Serialized__": True, "data": [{}, []]}})
    assert "inline" in _boundary.unsafe_reason(inline, serialized_ok=True)
    assert not os.path.exists(marker)


def test_errors_are_rebuilt_from_text_only():
    err = UserCodeError("boom", "Traceback ...", 1, "tls://w:1")
    back = rebuild_exception(repr(err), "", "DEVA")
    assert type(back) is UserCodeError and back.rank == 1 and back.message == "boom"
    back = rebuild_exception("PermissionError('denied')", "tb text", "DEVA")
    assert type(back) is PermissionError and "tb text" in "".join(back.__notes__)
    # a call, not a literal: kept as text, never evaluated
    back = rebuild_exception("ValueError(__import__('os').getpid())", "", "DEVA")
    assert type(back) is DeviceTaskError and "DEVA" in str(back)
    back = rebuild_exception("Evil('x')", "", "DEVA")
    assert type(back) is DeviceTaskError


def test_results_travel_as_data():
    import torch

    value = {"t": torch.arange(6.0).view(2, 3)[1], "n": [1, 2.5, "x", None, b"b"], "s": {3}}
    back = from_wire(to_wire(value))
    assert torch.equal(back["t"], torch.tensor([3.0, 4.0, 5.0]))
    assert back["n"] == [1, 2.5, "x", None, b"b"] and back["s"] == [3]
    state = from_wire(to_wire(torch.nn.Linear(2, 1)))
    assert set(state) == {"weight", "bias"}
    with pytest.raises(WireError, match="Evil"):
        to_wire(Evil("x"))
    with pytest.raises(RefusedResult):
        from_wire(RefusedResult("DEVA", "pickle"))


async def test_a_devices_pickle_to_the_scheduler_is_never_unpickled(harness, tmp_path):
    sp = await harness.scheduler()
    good = await harness.worker(sp, harness.device_credentials("DEVA"))
    b = harness.device_credentials("DEVB")  # accepted, signed by the CA
    conn = harness.security(b).get_connection_args("client")
    marker = tmp_path / "scheduler-ran-it"
    for op in ("identity", "register-worker", "heartbeat_worker"):
        comm = await connect(sp.address, **conn)
        try:
            await comm.write({"op": op, "x": ToPickle(Evil(str(marker))), "reply": True})
            try:
                reply = await asyncio.wait_for(comm.read(), 10)
            except CommClosedError:
                reply = None  # or it closes the comm
            assert reply is None or DENIED_MARKER in str(reply), reply
        finally:
            comm.abort()
    await asyncio.sleep(0.5)
    assert not marker.exists()
    assert "refused data serialized with pickle" in sp.log_path.read_text()
    # the cluster is unharmed
    client = await sp.client()
    try:
        assert list((await client.scheduler.identity())["workers"]) == [good.status()["address"]]
        assert await client.submit(lambda: 5, pure=False) == 5
    finally:
        await client.close()


async def test_a_devices_pickle_to_another_devices_worker_is_never_unpickled(harness, tmp_path):
    sp = await harness.scheduler()
    a = await harness.worker(sp, harness.device_credentials("DEVA"))
    worker_a = a.status()["address"]
    conn = harness.security(harness.device_credentials("DEVB")).get_connection_args("worker")
    marker = tmp_path / "worker-ran-it"
    for wrap in (ToPickle, Serialize):
        comm = await connect(worker_a, **conn)
        try:
            await comm.write({"op": "ping", "x": wrap(Evil(str(marker))), "reply": True})
            with pytest.raises(CommClosedError):
                await asyncio.wait_for(comm.read(), 10)
        finally:
            comm.abort()
    await asyncio.sleep(0.5)
    assert not marker.exists()
    # no lateral calls either: another device may not control A's worker, nor read data of
    # A's that no task of its own needs (the scheduler says which; see test_cluster_lifecycle
    # for a dependency that does move)
    client = await sp.client()
    try:
        held = client.submit(lambda: "A's secret", workers=[worker_a], pure=False)
        assert await held == "A's secret"
        async with rpc(worker_a, connection_args=conn) as r:
            assert await r.ping() == b"pong"
            for op, keys in [("get_data", [held.key]), ("get_data", ["nothing"]),
                             ("terminate", []), ("run", []), ("free_keys", [held.key])]:
                with pytest.raises(PermissionError, match=DENIED_MARKER):
                    await getattr(r, op)(keys=keys)
    finally:
        await client.close()


@pytest.fixture
async def evil_device(harness, tmp_path):
    """The scheduler, one honest device worker and one evil device worker."""
    sp = await harness.scheduler()
    good = await harness.worker(
        sp, harness.device_credentials("DEVA"), extra_pythonpath=[str(REPO)],
        env={"OMP_NUM_THREADS": "1"},
    )
    creds = harness.device_credentials("DEVEVIL")
    marker = tmp_path / "main-ran-it"
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "evil_worker.py"), sp.address, creds["ca_file"],
         creds["cert_file"], creds["key_file"], "DEVEVIL", str(marker)],
        stdout=subprocess.PIPE, stderr=(tmp_path / "evil.log").open("w"), text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    assert line.startswith("EVIL-READY"), (tmp_path / "evil.log").read_text()[-2000:]
    try:
        yield sp, good.status()["address"], line.split()[1], marker
    finally:
        proc.kill()
        proc.wait()


def _sync_client(sp):
    from distributed import Client

    from parallalx_jupyter.cluster.connect import guard_main_process

    guard_main_process()
    return Client(sp.address, security=sp.security(), timeout="30s")


async def test_an_evil_devices_results_and_errors_run_nothing_on_the_main_device(evil_device):
    sp, good, evil, marker = evil_device

    def scenario():
        client = _sync_client(sp)
        try:
            client.wait_for_workers(2, timeout=30)
            # (lambdas: cloudpickle sends them by value; a test module is not importable there)
            out = client.submit(lambda x: x + 1, 1, workers=[evil], pure=False).result(30)
            assert isinstance(out, RefusedResult) and "DEVEVIL" in str(out)
            fut = client.submit(lambda: int("the device says no"), workers=[evil], pure=False)
            with pytest.raises(ValueError, match="the device says no"):
                fut.result(timeout=30)
            # the honest device's plain result passes unchanged
            assert client.submit(lambda x: x + 1, 1, workers=[good], pure=False).result(30) == 2
        finally:
            client.close()

    await asyncio.get_running_loop().run_in_executor(None, scenario)
    await asyncio.sleep(0.5)
    assert not marker.exists()


async def test_training_next_to_an_evil_device_runs_nothing_on_the_main_device(evil_device):
    import functools

    import torch
    from torch import nn

    from parallalx_jupyter.workloads.train import train

    sp, good, evil, marker = evil_device

    def scenario():
        client = _sync_client(sp)
        try:
            client.wait_for_workers(2, timeout=30)
            x = torch.randn(256, 8)
            y = (x.sum(1) > 0).long()
            job = train(
                nn.Linear(8, 2), (x, y), nn.CrossEntropyLoss(),
                functools.partial(torch.optim.SGD, lr=0.1), epochs=2, batch_size=32,
                client=client, torch_threads=1, strategy="ddp", probe_timeout=20,
            )
            try:
                model = job.result(timeout=180)
                assert isinstance(model, nn.Module)
                return "trained"
            except Exception as exc:  # failing is fine, as long as it names the device
                assert "DEVEVIL" in str(exc) or evil in str(exc), exc
                return "failed"
        finally:
            client.close()

    outcome = await asyncio.get_running_loop().run_in_executor(None, scenario)
    await asyncio.sleep(0.5)
    assert not marker.exists(), outcome
