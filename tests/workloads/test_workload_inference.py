"""Sharded inference over a real TLS Dask cluster: outputs equal one local forward pass, in order,
every row exactly once, also when a worker is SIGKILLed half way; clear errors otherwise.

The clusters are the training tests' (separate scheduler and worker processes over mutual TLS),
re-exported by tests/workloads/conftest.py: ``cluster2`` (two workers, shared by this module's
tests that leave them alive) and ``cluster3`` (three fresh workers, for the test that kills one).
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from typing import Any

import cloudpickle
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from parallalx_jupyter.jobs.handle import Job, JobCancelledError
from parallalx_jupyter.workloads.base import WorkloadError
from parallalx_jupyter.workloads.inference import (
    InferenceError,
    InferenceUserError,
    InferenceWorkload,
    shard_rows,
)
from parallalx_jupyter.workloads.inference.data import _Queue
from parallalx_jupyter.workloads.runner import start

# Models and data sets below travel to the workers by value, as a notebook's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- user code
def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def make_x(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed))


def local(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(x)


class SlowNet(nn.Module):
    """The small net plus a sleep per batch, so that a run lasts long enough to disturb it.
    ``slow_on`` names a worker on which each batch sleeps ``factor`` times longer (a slower
    device, on one machine)."""

    def __init__(self, delay: float, slow_on: str | None = None, factor: float = 1.0) -> None:
        super().__init__()
        self.net = make_net()
        self.delay = delay
        self.slow_on = slow_on
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delay = self.delay
        if self.slow_on is not None:
            from distributed import get_worker

            if get_worker().name == self.slow_on:
                delay *= self.factor
        time.sleep(delay)
        return self.net(x)


class Exploding(nn.Module):
    """A bug only some shard meets: rows whose first feature is huge."""

    def __init__(self) -> None:
        super().__init__()
        self.net = make_net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x[:, 0] > 100).any()):
            raise ValueError("boom: a row this model cannot take")
        return self.net(x)


class Pairs(Dataset):
    """Map-style data set of (inputs, target) items."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], i % 3


def make_pairs() -> Pairs:
    """Factory: the data set is built on each worker, only row ranges travel."""
    return Pairs(make_x(777, seed=5))


def labels(out: torch.Tensor) -> list[int]:
    return out.argmax(dim=1).tolist()


def run(cluster2: Any, **params: Any) -> tuple[Job, Any]:
    params.setdefault("target_shard_seconds", 0.02)
    job = start("inference", params, client=cluster2.client, report=False)
    return job, job.result(timeout=90)


def events(job: Job, kind: str) -> list[dict[str, Any]]:
    return [e for e in job.events if e["kind"] == kind]


# --------------------------------------------------------------------------- pure parts
def test_shard_rows_follow_speed() -> None:
    # Far from the end: about target_s of each device's work, in whole batches.
    assert shard_rows(1000, 5000, 10**6, 10, 1.0) == 1000
    assert shard_rows(4000, 5000, 10**6, 10, 1.0) == 4000
    assert shard_rows(1234, 5000, 10**6, 100, 1.0) == 1200
    assert shard_rows(4000, 5000, 10**6, 10, 0.25) == 1000
    # Near the end: each device's speed share of what is left, so all finish together.
    assert shard_rows(1000, 5000, 1000, 10, 1.0) == 200
    assert shard_rows(4000, 5000, 1000, 10, 1.0) == 800
    # Rows already in flight count: outstanding work is shared by speed, and a worker holding
    # its share gets nothing more for now, unless it holds nothing at all.
    assert shard_rows(4000, 5000, 600, 10, 1.0, in_flight=300, all_in_flight=400) == 500
    assert shard_rows(1000, 5000, 600, 10, 1.0, in_flight=300, all_in_flight=400) == 0
    assert shard_rows(1000, 5000, 10, 10, 1.0) == 10
    # At least one batch (a slow device), never more than is left.
    assert shard_rows(1, 5000, 10**6, 64, 1.0) == 64
    assert shard_rows(10**6, 10**6, 5, 64, 1.0) == 5
    assert shard_rows(100, 100, 0, 64, 1.0) == 0


def test_queue_puts_lost_ranges_first() -> None:
    q = _Queue(100)
    assert q.take(30) == (0, 30, 0)
    assert q.take(30) == (30, 60, 0)
    q.put_back(0, 30, 1)
    assert q.remaining() == 70
    assert q.take(50) == (0, 30, 1)  # a put-back range is never merged with fresh rows
    assert q.take(500) == (60, 100, 0)
    assert not q.ranges


# --------------------------------------------------------------------------- on a cluster
@pytest.mark.parametrize("form", ["tensor", "tuple"])
def test_outputs_equal_one_local_pass(cluster2: Any, form: str) -> None:
    x = make_x(3000)
    model = SlowNet(0.002)
    dataset = x if form == "tensor" else (x, torch.arange(3000))
    job, out = run(cluster2, model=model, dataset=dataset, batch_size=32)
    assert isinstance(out, torch.Tensor) and out.device.type == "cpu"
    assert out.shape == (3000, 3)
    torch.testing.assert_close(out, local(model.net, x), atol=1e-5, rtol=1e-5)
    speeds = events(job, "speeds")[-1]["speeds"]
    assert set(speeds) == set(cluster2.workers_by_name().values())
    assert all(s > 0 for s in speeds.values())
    assert job.progress["step"] == job.progress["total"] == 3000
    assert sum(d["rows"] for d in job.progress["workers_detail"]) == 3000
    assert job.state == "finished"
    # The model cached on each worker for the job's shards is gone with the job.
    assert set(cluster2.client.run(cached_jobs).values()) == {0}
    assert InferenceWorkload().summarize(out) == {"rows": 3000, "shape": [3000, 3],
                                                  "dtype": "float32"}


def cached_jobs() -> int:
    from parallalx_jupyter.workloads.inference import tasks

    return len(tasks._CACHE)


def test_only_the_named_workers_run(cluster2: Any) -> None:
    names = cluster2.workers_by_name()
    net = make_net()
    x = make_x(300)
    job, out = run(cluster2, model=net, dataset=x, batch_size=16, workers=[names["w1"]])
    torch.testing.assert_close(out, local(net, x), atol=1e-5, rtol=1e-5)
    assert events(job, "summary")[-1]["workers"] == {names["w1"]: 300}
    job = start("inference", {"model": net, "dataset": x, "workers": ["tls://10.9.9.9:1"]},
                client=cluster2.client, report=False)
    with pytest.raises(InferenceError, match="not in the cluster: tls://10.9.9.9:1"):
        job.result(timeout=30)


def test_postprocess_runs_on_the_worker(cluster2: Any) -> None:
    x = make_x(1000, seed=2)
    net = make_net(3)
    _, out = run(cluster2, model=net, dataset=x, batch_size=64,
                 postprocess=functools.partial(torch.argmax, dim=1))
    assert torch.equal(out, local(net, x).argmax(dim=1))
    # Non-tensor outputs (one per row) come back as one flat list, in order.
    _, out = run(cluster2, model=net, dataset=x, batch_size=64, postprocess=labels)
    assert out == local(net, x).argmax(dim=1).tolist()
    assert InferenceWorkload().summarize(out)["rows"] == 1000


def test_map_style_data_sets_and_factories(cluster2: Any) -> None:
    net = make_net(4)
    x = make_x(500, seed=3)
    for dataset in (TensorDataset(x, torch.zeros(500)), Pairs(x)):
        _, out = run(cluster2, model=net, dataset=dataset, batch_size=50)
        torch.testing.assert_close(out, local(net, x), atol=1e-5, rtol=1e-5)
    # Built on each worker from a factory (and the model from a factory too).
    job, out = run(cluster2, model=functools.partial(make_net, 4), dataset=make_pairs,
                   batch_size=40)
    torch.testing.assert_close(out, local(net, make_pairs().x), atol=1e-5, rtol=1e-5)
    assert job.progress["total"] == 777


def test_shards_follow_measured_speed(cluster2: Any) -> None:
    """w0 runs each batch 4x slower than w1: it gets smaller shards and fewer rows."""
    x = make_x(6000, seed=6)
    model = SlowNet(0.004, slow_on="w0", factor=4.0)
    job, out = run(cluster2, model=model, dataset=x, batch_size=20, target_shard_seconds=0.1)
    torch.testing.assert_close(out, local(model.net, x), atol=1e-5, rtol=1e-5)
    names = cluster2.workers_by_name()
    speeds = events(job, "speeds")[-1]["speeds"]
    assert speeds[names["w1"]] > 2 * speeds[names["w0"]]
    detail = {d["worker"]: d for d in job.progress["workers_detail"]}
    slow, fast = detail[names["w0"]], detail[names["w1"]]
    assert slow["rows"] + fast["rows"] == 6000
    assert fast["rows"] > 2 * slow["rows"]
    assert fast["rows"] / fast["shards"] > 2 * slow["rows"] / max(slow["shards"], 1)


def test_bad_parameters_are_one_clear_line(cluster2: Any) -> None:
    x = make_x(10)
    cases = [
        ({"model": make_net(), "dataset": x, "bogus": 1}, "unknown parameter(s) bogus"),
        ({"model": make_net(), "dataset": x, "batch_size": 0}, "batch_size"),
        ({"model": make_net(), "dataset": 42}, "parameter 'dataset'"),
        ({"model": make_net(), "dataset": x[:0]}, "empty"),
        ({"dataset": x}, "missing parameter(s) model"),
    ]
    for params, expected in cases:
        with pytest.raises(WorkloadError) as err:
            start("inference", params, client=cluster2.client, report=False)
        message = str(err.value)
        assert expected in message and "\n" not in message
        assert message.startswith("inference")


def test_a_model_that_cannot_travel_is_named_with_the_way_out(cluster2: Any) -> None:
    net = make_net()
    net.lock = threading.Lock()  # nothing can copy a lock to another process
    job = start("inference", {"model": net, "dataset": make_x(10)}, client=cluster2.client,
                report=False)
    with pytest.raises(TypeError, match=r"^model cannot be sent to the workers .*model=lambda"):
        job.result(timeout=60)


def test_user_code_error_fails_with_the_remote_traceback(cluster2: Any) -> None:
    x = make_x(1000, seed=7)
    x[700, 0] = 1000.0
    job = start("inference", {"model": Exploding(), "dataset": x, "batch_size": 32,
                              "target_shard_seconds": 0.02}, client=cluster2.client, report=False)
    with pytest.raises(InferenceUserError) as err:
        job.result(timeout=60)
    message = str(err.value)
    assert "boom: a row this model cannot take" in message
    assert "Traceback on worker" in message and "in forward" in message
    assert job.state == "failed"
    # Not retried: a user error is not a lost worker.
    assert not events(job, "worker_lost")
    # The cluster is still usable afterwards.
    net = make_net()
    _, out = run(cluster2, model=net, dataset=make_x(100), batch_size=16)
    torch.testing.assert_close(out, local(net, make_x(100)), atol=1e-5, rtol=1e-5)


def test_cancel_stops_the_job(cluster2: Any) -> None:
    job = start("inference", {"model": SlowNet(0.05), "dataset": make_x(4000), "batch_size": 8,
                              "target_shard_seconds": 0.2}, client=cluster2.client, report=False)
    deadline = time.monotonic() + 60
    while job.progress.get("step", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    t0 = time.monotonic()
    assert job.cancel()
    with pytest.raises(JobCancelledError):
        job.result(timeout=30)
    assert time.monotonic() - t0 < 10
    assert job.state == "cancelled"


def test_killed_worker_rows_are_redone_exactly_once(cluster3: Any) -> None:
    """SIGKILL one of three workers half way and start a new one: the dead worker's shards are
    redone by the others, the newcomer is probed and joins in, every row comes back once."""
    n = 8000
    x = make_x(n, seed=8)
    model = SlowNet(0.02)
    job = start("inference", {"model": model, "dataset": x, "batch_size": 8,
                              "target_shard_seconds": 0.25},
                client=cluster3.client, report=False)
    deadline = time.monotonic() + 60
    while job.progress.get("step", 0) < 800 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not job.done(), "the run ended before a worker could be killed"
    victim = cluster3.workers_by_name()["w1"]
    cluster3.signal("w1", signal.SIGKILL)
    cluster3.add_worker("w3")
    out = job.result(timeout=90)
    assert out.shape == (n, 3)
    torch.testing.assert_close(out, local(model.net, x), atol=1e-5, rtol=1e-5)
    [lost] = events(job, "worker_lost")
    assert lost["worker"] == victim and lost["requeued"]
    summary = events(job, "summary")[-1]
    assert sum(summary["workers"].values()) == n
    assert summary["lost"] == [victim]
    newcomer = cluster3.workers_by_name()["w3"]
    assert newcomer in events(job, "speeds")[-1]["speeds"]
    assert summary["workers"][newcomer] > 0
