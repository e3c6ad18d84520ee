"""A real training job shows up in its device's job list, live, and is cancelled from there.

Real parts only: a device's `jupyter server` subprocess (the job list), a two-worker TLS Dask
cluster (the training), and the reporter in this process (the job's owner, like a kernel).
"""

from __future__ import annotations

import functools
import sys

import cloudpickle
import pytest
import torch
from torch import nn

from parallalx_jupyter.client import ApiClient
from parallalx_jupyter.local_device import wait_for
from parallalx_jupyter.training import TrainingCancelledError
from parallalx_jupyter.workloads import run
from parallalx_jupyter.workloads.train import train

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(240)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    return x, (x.sum(1) > 0).long()


def test_training_job_is_listed_live_and_cancelled_through_the_api(cluster2, make_device):
    dev = make_device("owner")
    api = ApiClient(dev.url, dev.token)
    job = train(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        data(),
        nn.CrossEntropyLoss(),
        functools.partial(torch.optim.SGD, lr=0.05),
        epochs=10_000,
        batch_size=32,
        client=cluster2.client,
        torch_threads=1,
        metrics_interval=0.1,
        strategy="ddp",  # every worker trains: the listing shows both
        name="reporting test",
        report=api,
    )

    def listed() -> dict | None:
        jobs = {j["id"]: j for j in dev.api("GET", "jobs")}
        j = jobs.get(job.id)
        return j if j and j["state"] == "running" and (j["progress"]["step"] or 0) > 0 else None

    # the speed is the job's smoothed one (jobs/speed.py): known after a moment of training
    wait_for(lambda: listed() is not None and len(listed()["loss_history"]) >= 2
             and listed()["progress"]["samples_per_s"] is not None, timeout=60)
    seen = listed()
    assert seen["workload"] == "train" and seen["name"] == "reporting test"
    assert seen["owner"]["kind"] == "python" and seen["progress"]["workers"] == 2
    assert seen["progress"]["total"] == job.progress["total_steps"]
    assert 0 < seen["progress"]["fraction"] < 1 and seen["progress"]["samples_per_s"] > 0

    dev.api("POST", f"jobs/{job.id}/cancel")  # as the panel or the CLI would
    with pytest.raises(TrainingCancelledError):
        job.result(timeout=60)
    final = dev.api("GET", f"jobs/{job.id}")
    assert final["state"] == "cancelled" and final["finished_at"] is not None
    assert job.state == "cancelled"


def test_a_job_without_a_server_stays_local(cluster2, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path))  # no server.json there
    monkeypatch.delenv("PARALLALX_URL", raising=False)
    job = run(
        "train", model=nn.Linear(8, 2), dataset=data(), loss_fn=nn.CrossEntropyLoss(),
        optimizer=functools.partial(torch.optim.SGD, lr=0.05), epochs=1, batch_size=64,
        client=cluster2.client, torch_threads=1,
    )
    assert isinstance(job.result(timeout=120), nn.Linear)
    assert job.state == "finished"
