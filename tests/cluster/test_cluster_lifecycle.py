"""Revocation, scheduler restarts and process hygiene with real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap

import cloudpickle
import pytest
from cluster_helpers import pid_alive, wait_until

from parallalx_jupyter.cluster import ClusterCredentials, SchedulerProcess

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


async def test_revoke_removes_worker_fast_and_refuses_its_cert_after_restart(harness):
    sp = await harness.scheduler()
    a = harness.device_credentials("DEVA")
    ws_a = await harness.worker(sp, a)
    ws_b = await harness.worker(sp, harness.device_credentials("DEVB"))
    old_pid = ws_a.pid
    address_a, address_b = ws_a.status()["address"], ws_b.status()["address"]
    client = await sp.client()
    try:  # device workers fetch each other's results (peer get_data is allowed)
        x = client.submit(lambda: 20, workers=[address_a], pure=False)
        y = client.submit(lambda v: v + 1, x, workers=[address_b], pure=False)
        assert await y == 21
        del x, y
    finally:
        await client.close()

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    removed = await sp.revoke_device("DEVA", reason="stopped sharing")
    assert removed == [address_a]
    await wait_until(lambda: "DEVA" not in sp.read_state()["workers"], 5)
    await wait_until(lambda: not pid_alive(old_pid), 5)
    assert loop.time() - t0 < 5
    # its supervisor restarted it once, and the scheduler refused the old certificate
    await ws_a.supervisor.wait_for("refused", 15)
    assert "revoked" in ws_a.status()["reason"]
    # the other device is untouched
    client = await sp.client()
    try:
        assert list((await client.scheduler.identity())["workers"]) == [address_b]
        assert await client.submit(lambda: 5, pure=False) == 5
    finally:
        await client.close()

    # the revocation survives a restart of the controlling process and the scheduler
    await ws_b.stop()
    await sp.stop()
    sp2 = SchedulerProcess.from_cluster_dir(sp.config.cluster_dir, backoff_initial=0.2)
    harness.schedulers.append(sp2)
    await sp2.start()
    assert sp2.address == sp.address and sp2.ca_fingerprint == sp.ca_fingerprint
    again = await harness.worker(sp2, a, join=False)
    await again.supervisor.wait_for("refused", 20)
    assert sp2.read_state()["workers"] == {}


async def test_revoke_reports_a_worker_the_file_poll_removed_first(harness):
    """The scheduler polls the revocation files too: when the poll enforces a revocation
    before the main client's RPC arrives, the RPC still reports that device's worker."""
    from parallalx_jupyter.cluster import crl

    sp = await harness.scheduler()
    ws = await harness.worker(sp, harness.device_credentials("DEVA"))
    address = ws.status()["address"]
    crl.revoke_device(sp.config.cluster_dir, "DEVA", "stopped sharing")  # as a crashed call
    await wait_until(lambda: "DEVA" not in sp.read_state()["workers"], 5)
    assert await sp.revoke_device("DEVA", reason="stopped sharing") == [address]
    assert await sp.revoke_device("DEVA", reason="again") == []  # reported once


async def test_admission_refuses_on_the_current_revocation_list(harness):
    """A device paired again is taken off revoked.json moments before its new worker
    connects; the scheduler must not refuse it on the list of its last poll."""
    from parallalx_jupyter.cluster.tls import RevocationList

    sp = await harness.scheduler(revocation_poll_interval=3600)  # no poll helps here
    await sp.revoke_device("DEVA", reason="stopped sharing")
    RevocationList.in_dir(sp.config.cluster_dir).unrevoke_device("DEVA")  # re-paired
    ws = await harness.worker(sp, harness.device_credentials("DEVA"), join=False)
    await ws.wait_joined(20)
    assert "DEVA" in sp.read_state()["workers"]


async def test_scheduler_crash_and_controller_restart_worker_rejoins(harness):
    sp = await harness.scheduler()
    ws = await harness.worker(sp, harness.device_credentials("DEVA"))
    address = sp.address

    # 1. the scheduler process dies: its supervisor restarts it on the same address and
    #    the worker's supervisor restarts the worker, which joins again
    old = sp.pid
    os.kill(old, signal.SIGKILL)
    await wait_until(lambda: sp.pid not in (None, old), 20)
    state = await sp.wait_running(30)
    assert state["address"] == address
    await wait_until(lambda: ws.restarts >= 1, 20)
    await ws.wait_joined(30)
    client = await sp.client()
    try:
        assert await client.submit(lambda x: x * 2, 21, pure=False) == 42
    finally:
        await client.close()

    # 2. the controlling process goes away (stop) and a new one re-forms the cluster from
    #    the persisted state
    restarts = ws.restarts
    await sp.stop()
    assert not pid_alive(state["pid"])
    sp2 = SchedulerProcess.from_cluster_dir(sp.config.cluster_dir, backoff_initial=0.2)
    harness.schedulers.append(sp2)
    await sp2.start()
    assert sp2.address == address
    await wait_until(lambda: ws.restarts > restarts, 20)
    await ws.wait_joined(30)
    client = await sp2.client()
    try:
        assert await client.submit(lambda: "back", pure=False) == "back"
        assert list(sp2.read_state()["workers"]) == ["DEVA"]
    finally:
        await client.close()

    pid = ws.pid
    await ws.stop()
    assert ws.state == "stopped" and not pid_alive(pid)


CONTROLLER = textwrap.dedent(
    """
    import asyncio, json, sys
    from parallalx_jupyter.cluster import (
        SchedulerConfig, SchedulerProcess, WorkerSpec, WorkerSupervisor)

    async def main():
        sp = SchedulerProcess(SchedulerConfig(cluster_dir=sys.argv[1]))
        await sp.start()
        spec = json.loads(sys.argv[2])
        ws = WorkerSupervisor(WorkerSpec(scheduler_address=sp.address, **spec))
        await ws.start()
        await ws.wait_joined(30)
        print(json.dumps({"scheduler": sp.pid, "worker": ws.pid}), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_no_orphans_when_the_controlling_process_is_killed(harness, tmp_path):
    ClusterCredentials.ensure(harness.cluster_dir)
    dev = harness.device_credentials("DEVA")
    spec = {
        "device_id": "DEVA",
        "ca_file": dev["ca_file"],
        "cert_file": dev["cert_file"],
        "key_file": dev["key_file"],
        "worker_dir": str(dev["dir"] / "wc"),
        "listen_host": "127.0.0.1",
        "memory_limit": "2GiB",
    }
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(harness.cluster_dir),
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        pids = json.loads(line)
        assert pid_alive(pids["scheduler"]) and pid_alive(pids["worker"])
        proc.kill()  # SIGKILL: no cleanup code runs in the controller
        await proc.wait()
        await wait_until(
            lambda: not pid_alive(pids["scheduler"]) and not pid_alive(pids["worker"]), 15
        )
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _torch_mapped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return "libtorch_cpu" in f.read()
    except OSError:
        return False


async def test_a_joined_worker_prestarts_its_rank_forkserver_and_never_loads_torch(
    harness, monkeypatch
):
    """The first job on a running cluster must not wait for torch to import: the worker starts
    the forkserver that rank processes fork from as soon as it joins. The worker process
    itself never loads torch (the probe runs in the forkserver's child) and leaves no
    forkserver behind when it stops."""
    import psutil

    from parallalx_jupyter.training.preflight import probe_task
    from parallalx_jupyter.wire import from_wire

    monkeypatch.setenv("PARALLALX_PRESTART_RANKS", "1")
    sp = await harness.scheduler()
    ws = await harness.worker(sp, harness.device_credentials("DEVA"))

    def forkserver() -> int | None:
        for child in psutil.Process(ws.pid).children():
            try:
                if "forkserver" in " ".join(child.cmdline()) and _torch_mapped(child.pid):
                    return child.pid
            except psutil.Error:
                continue
        return None

    server = await wait_until(forkserver, 60)  # no job was submitted: the worker started it

    def imported():  # nested: Dask pickles module-level functions by reference
        import sys as _sys

        return sorted(m for m in ("torch", "parallalx_jupyter") if m in _sys.modules)

    client = await sp.client()
    try:
        address = ws.status()["address"]
        assert await client.submit(imported, workers=[address], pure=False) == []
        info = from_wire(await client.submit(
            probe_task, workers=[ws.status()["address"]], pure=False))
    finally:
        await client.close()
    import torch

    assert info["torch"] == str(torch.__version__) and info["pid"] == ws.pid
    assert not _torch_mapped(ws.pid)
    await ws.stop()
    await wait_until(lambda: not pid_alive(server), 15)
