"""One job, shown the same way on every surface (issue #17, items 8 and 9).

Real parts only: a device's `jupyter server` subprocess (the job list the panel and the CLI
read), a two-worker TLS Dask cluster (the training), the job's reporter in this process (the
owner, like a kernel), the CLI's text (`text.jobs_table` over `GET jobs`) and the notebook's
`TrainingDashboard` widget.
"""

from __future__ import annotations

import functools
import sys
import threading
import time

import cloudpickle
import pytest
import torch
from torch import nn

from parallalx_jupyter.client import ApiClient
from parallalx_jupyter.jobs.reporter import summarize
from parallalx_jupyter.local_device import wait_for
from parallalx_jupyter.notebook.training import TrainingDashboard
from parallalx_jupyter.text import eta, jobs_table, rate, speed_eta
from parallalx_jupyter.training import TrainingCancelledError
from parallalx_jupyter.training.driver import PHASES
from parallalx_jupyter.workloads.train import train

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(300)


class Net(nn.Module):
    """Wide enough that timing the devices takes a noticeable while, as for a real model."""

    def __init__(self, width: int = 2048) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width),
                                  nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def digits_like() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1797, 64, generator=g)
    return x, x[:, :10].argmax(1)


class Snapshots:
    """`GET jobs/{id}` as often as a panel could ask, from the moment the job exists."""

    def __init__(self, api: ApiClient, job_id: str) -> None:
        self.api, self.job_id = api, job_id
        self.seen: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.append(self.api.call("GET", f"jobs/{self.job_id}"))
            except Exception:  # not registered yet
                pass
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def test_one_job_shows_its_phase_speed_name_and_cancel_alike_everywhere(cluster2, make_device):
    dev = make_device("owner")
    api = ApiClient(dev.url, dev.token)
    job = train(
        Net(), digits_like(), nn.CrossEntropyLoss(),
        functools.partial(torch.optim.SGD, lr=0.05),
        epochs=10_000, batch_size=32, client=cluster2.client, torch_threads=1,
        metrics_interval=0.1, strategy="ddp", report=api,
    )  # fmt: skip
    snapshots = Snapshots(api, job.id)
    live = TrainingDashboard(job)  # a notebook cell showing it from the start
    try:
        # 9b: named after what it trains, on this process's handle and in the job list
        assert job.name == "train Net on 1,797 samples"

        # 9d: before the first step the job says what it does, in its payload
        wait_for(lambda: (job.progress.get("global_step") or 0) > 3, timeout=180)
        before = [s for s in snapshots.seen if not s["progress"]["step"]]
        said = [s["progress"]["message"] for s in before]
        assert PHASES["preflight"] in said, said
        assert said.index(PHASES["preflight"]) > said.index(PHASES["starting"]) if \
            PHASES["starting"] in said else True
        assert all(s["state"] == "running" for s in before if s["progress"]["message"])
        phases = [e.get("phase") for e in job.events if e.get("kind") == "state"
                  and e.get("phase")]
        assert phases == ["starting", "starting", "preflight", "placing", "training"], phases

        # 8: ranks are labelled by their devices' names, never a worker address
        devices = {r["device"] for r in job.progress["ranks"]}
        assert devices == {"w0", "w1"}
        assert set(job.progress["samples_by_device"]) == {"w0", "w1"}
        assert "tls://" not in repr([w.children[1].value for w in live.workers.children])
        # ... and so in the job list the panel reads (its Workers row)
        # (a record lists the ranks that have reported so far: both, soon)
        wait_for(lambda: sorted(dev.api("GET", f"jobs/{job.id}")["progress"].get("devices")
                                or []) == ["w0", "w1"], 30)

        # 9a: smoothed numbers: steady once measured (the ranks' raw windows jump)
        wait_for(lambda: (job.progress.get("global_step") or 0) > 40, timeout=120)
        speeds = [h["samples_per_s"] for h in job.history[-10:]]
        assert all(s is not None for s in speeds)
        assert max(speeds) / min(speeds) < 1.5, speeds

        # 9c: the user's own cancel, through the API as the panel or the CLI does it
        dev.api("POST", f"jobs/{job.id}/cancel")
        with pytest.raises(TrainingCancelledError):
            job.result(timeout=120)
    finally:
        snapshots.stop()
        job.cancel()

    final = dev.api("GET", f"jobs/{job.id}")
    p = final["progress"]
    assert final["state"] == "cancelled" and final["error"] is None
    assert p["message"].startswith("cancelled by the user at step "), p["message"]
    assert job.state == "cancelled" and job.error is None
    assert job.state_message == p["message"]

    # 9a: the payload's numbers are the job's own, and every surface writes them alike
    mine = summarize(job.progress)
    assert (p["samples_per_s"], p["eta_s"]) == (mine["samples_per_s"], mine["eta_s"])
    assert p["samples_per_s"] is not None and p["eta_s"] is not None
    cli = next(line for line in jobs_table(dev.api("GET", "jobs")).splitlines()
               if line.startswith(job.id))
    assert f"  {rate(p['samples_per_s'])}  " in cli and f"  {eta(p['eta_s'])}  " in cli
    assert "cancelled by the user at step" in cli
    notebook = TrainingDashboard(job)
    assert speed_eta(p) in notebook.stats.value
    assert speed_eta(p) in live.stats.value
    for view in (notebook, live):
        assert "cancelled by the user at step" in view.final.value
        assert view.error == "" and view.overall.bar_style == "warning"
