"""One worker per shared GPU: which GPUs, how many workers, and launch's ranks on them."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import cloudpickle
import pytest
from cluster_helpers import pid_alive, wait_until

from parallalx_jupyter.cluster.gpus import gpu_layout, visible_gpus
from parallalx_jupyter.cluster.worker import WorkerGroup, WorkerSupervisor, supervise

cloudpickle.register_pickle_by_value(sys.modules[__name__])
REPO = Path(__file__).resolve().parents[2]

NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-aaaa)"
echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-bbbb)"
"""


@pytest.fixture
def two_gpu_smi(tmp_path, monkeypatch) -> None:
    """``nvidia-smi -L`` of a two-GPU machine (this one has none): the real subprocess call,
    answered by a script on PATH."""
    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(NVIDIA_SMI)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tool.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_the_gpus_come_from_nvidia_smi_within_the_servers_own_visible_devices(
    two_gpu_smi, monkeypatch
) -> None:
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # the server was started on GPU 1 only
    assert visible_gpus() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_gpus() == []


def test_no_nvidia_smi_means_unknown(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() is None


@pytest.mark.parametrize(("asked", "visible", "layout"), [
    (None, ["0", "1"], ["0", "1"]),  # not limited: every GPU, one worker each
    (1, ["0", "1"], ["0"]),
    (5, ["0", "1"], ["0", "1"]),
    (0, ["0", "1"], []),  # the user shares no GPU: the worker sees none
    (0, None, []),
    (None, None, None),  # nothing known: one worker, as the process finds the GPUs
    (2, [], None),
])
def test_layout(asked, visible, layout) -> None:
    assert gpu_layout(asked, visible) == layout


def _spec_args(address: str, creds: dict, layout: list[str] | None) -> dict:
    return {
        "scheduler_address": address, "device_id": creds["device_id"],
        "ca_file": creds["ca_file"], "cert_file": creds["cert_file"],
        "key_file": creds["key_file"], "worker_dir": str(creds["dir"] / "run"),
        "listen_host": "127.0.0.1", "memory_limit": 4 * 2**30, "gpus": 0,
        "extra_pythonpath": [str(REPO)], "gpu_layout": layout,
    }


def test_the_stored_layout_makes_the_workers(tmp_path) -> None:
    address = "tls://127.0.0.1:1"
    creds = {"device_id": "DEVA", "ca_file": "ca", "cert_file": "c", "key_file": "k",
             "dir": tmp_path}
    one = supervise(_spec_args(address, creds, None))
    assert isinstance(one, WorkerSupervisor) and one.spec.cuda_visible_devices is None
    hidden = supervise(_spec_args(address, creds, []))
    assert isinstance(hidden, WorkerSupervisor) and hidden.spec.cuda_visible_devices == ""
    single = supervise(_spec_args(address, creds, ["1"]))
    assert single.spec.name is None and single.spec.cuda_visible_devices == "1"
    group = supervise(_spec_args(address, creds, ["0", "1"]))
    assert isinstance(group, WorkerGroup)
    assert [(m.spec.name, m.spec.cuda_visible_devices, m.spec.resources or m.spec.gpus,
             m.spec.memory_limit) for m in group.members] == [
        ("DEVA/gpu0", "0", 1, 2 * 2**30), ("DEVA/gpu1", "1", 1, 2 * 2**30)]
    assert len({m.spec.worker_dir for m in group.members}) == 2


def rank_view() -> dict:
    import os

    return {k: os.environ.get(k) for k in ("RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                           "CUDA_VISIBLE_DEVICES")}


def gather_views() -> list:
    import torch.distributed as dist

    views = [None] * dist.get_world_size()
    dist.all_gather_object(views, rank_view())
    return views


@pytest.mark.timeout(240)
async def test_a_two_gpu_device_runs_a_worker_and_a_rank_per_gpu(harness) -> None:
    """Two workers of one device certificate join as DEVA/gpu0 and DEVA/gpu1, each seeing
    only its GPU; px.launch puts one rank on each (local ranks 0 and 1); revoking the device
    stops both."""
    import asyncio

    import parallalx_jupyter as px

    sp = await harness.scheduler()
    creds = harness.device_credentials("DEVA")
    group = supervise({**_spec_args(sp.address, creds, ["0", "1"]),
                       "env": {"OMP_NUM_THREADS": "1"}}, backoff_initial=0.2, backoff_max=1.0,
                      stop_timeout=5)
    assert isinstance(group, WorkerGroup)
    harness.workers.append(group)
    await group.start()
    await group.wait_joined(60)
    assert group.state == "running"
    client = await sp.client()
    try:
        info = await client.scheduler.identity()
        assert sorted(w["name"] for w in info["workers"].values()) == ["DEVA/gpu0", "DEVA/gpu1"]
    finally:
        await client.close()

    from distributed import Client

    sync_client = await asyncio.to_thread(Client, sp.address, security=sp.security(),
                                          timeout="30s")
    try:
        job = px.launch(gather_views, client=sync_client, report=False)
        views = await asyncio.to_thread(job.result, 180)
    finally:
        await asyncio.to_thread(sync_client.close)
    assert sorted((v["LOCAL_RANK"], v["LOCAL_WORLD_SIZE"]) for v in views) == [
        ("0", "2"), ("1", "2")]
    assert sorted(v["CUDA_VISIBLE_DEVICES"] for v in views) == ["0", "1"]
    pids = [m.pid for m in group.members]
    await group.revoke()
    await wait_until(lambda: not any(pid_alive(p) for p in pids), 15)


def test_an_accepting_device_with_two_gpus_serves_with_a_worker_on_each(make_device, tmp_path):
    """The service's own path: bravo (two GPUs, as `nvidia-smi -L` lists them) accepts an
    invitation that does not limit GPUs, and joins with DEVICE/gpu0 and DEVICE/gpu1; when it
    stops sharing, both leave."""
    from parallalx_jupyter.local_device import wait_for

    tool = tmp_path / "bin" / "nvidia-smi"
    tool.parent.mkdir()
    tool.write_text(NVIDIA_SMI)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    a = make_device("alpha")
    b = make_device("bravo", env={"PATH": f"{tool.parent}{os.pathsep}{os.environ['PATH']}"})
    a_id, b_id = a.api("GET", "device")["id"], b.api("GET", "device")["id"]
    sent = a.api("POST", "invitations", {"url": b.peer_url, "asks": {"nthreads": 1}})
    shown = b.api("GET", f"requests/{sent['id']}")
    b.api("POST", f"requests/{sent['id']}/accept", {"shown_hash": shown["shown_hash"]})

    def names() -> list[str]:
        return sorted(str(w.get("name")) for w in a.api("GET", "cluster")["workers"]
                      if w["device_id"] == b_id)

    wait_for(lambda: len(names()) == 2, 60, 0.1)
    assert names() == [f"{b_id}/gpu0", f"{b_id}/gpu1"]
    wait_for(lambda: b.api("GET", "cluster")["serving"][0]["state"] == "running", 30, 0.1)
    b.api("POST", f"devices/{a_id}/revoke")
    wait_for(lambda: names() == [], 10, 0.1)
