"""Faults on a real cluster: a worker is SIGKILLed or SIGSTOPped in the middle of training.

Each test gets three fresh worker processes (no nanny, so nothing restarts the victim).
"""

from __future__ import annotations

import functools
import signal
import sys
import time

import cloudpickle
import pytest
import torch
from torch import nn

from parallalx_jupyter.training import NotEnoughWorkersError
from parallalx_jupyter.workloads.train import train

# Functions below are shipped to the workers by value, as a notebook's would be.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)

CHECKPOINT_EVERY = 25


def data(n: int = 24_000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, :4].sum(1) > 0).long()


def model_factory() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))


def start(cluster, **kw):
    kw.setdefault("min_workers", 2)
    kw.setdefault("group_timeout", 20.0)
    kw.setdefault("strategy", "ddp")
    kw.setdefault("checkpoint_every", CHECKPOINT_EVERY)
    return train(
        model_factory,
        data(),
        nn.CrossEntropyLoss(),
        functools.partial(torch.optim.SGD, lr=0.1),
        batch_size=32,
        epochs=1,
        client=cluster.client,
        torch_threads=1,
        metrics_interval=0.05,
        **kw,
    )


def wait_for_step(job, step: int, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while job.progress.get("global_step", 0) < step:
        assert not job.done(), job.exception()
        assert time.monotonic() < deadline, f"no progress: {job.progress}"
        time.sleep(0.02)


def victim_of(cluster, job, rank: int) -> tuple[str, str]:
    assert job.preflight is not None and job.preflight.world_size == 3
    address = job.preflight.devices[rank].worker
    return address, cluster.name_of(address)


def restart_events(job) -> list[dict]:
    return [e for e in job.events if e["kind"] == "restart"]


def shipped_jobs(client, monkeypatch) -> list[tuple[str, ...]]:
    """The workers each copy of a training job (its model and data) was scattered to."""
    from parallalx_jupyter.training.spec import JobSpec

    seen: list[tuple[str, ...]] = []
    scatter = client.scatter

    def recording(data, *args, **kw):
        if isinstance(data, list) and data and isinstance(data[0], JobSpec):
            seen.append(tuple(kw.get("workers") or ()))
        return scatter(data, *args, **kw)

    monkeypatch.setattr(client, "scatter", recording)
    return seen


def test_sigkill_worker_finishes_with_survivors(cluster3, tmp_path, monkeypatch) -> None:
    shipped = shipped_jobs(cluster3.client, monkeypatch)
    everyone = sorted((w,) for w in cluster3.workers_by_name().values())
    job = start(cluster3, checkpoint_dir=tmp_path)
    wait_for_step(job, 120)
    address, name = victim_of(cluster3, job, rank=1)
    killed_at = time.time()
    cluster3.signal(name, signal.SIGKILL)

    trained = job.result(timeout=180)
    assert isinstance(trained, nn.Module)
    [restart] = restart_events(job)
    assert restart["lost_workers"] == [address]
    assert restart["time"] - killed_at < 10, "survivors should fail fast on a crash"
    assert restart["repeated_steps"] <= CHECKPOINT_EVERY
    assert job.preflight.world_size == 2
    # the job travelled to each worker once: the restart re-shipped only the resume point
    assert sorted(shipped) == everyone, shipped
    assert job.progress["global_step"] == job.progress["total_steps"] == 750
    x, y = data(2000)
    assert (trained(x).argmax(1) == y).float().mean() > 0.9
    print(
        f"\nSIGKILL: detected+restarted after {restart['time'] - killed_at:.2f}s, "
        f"resumed at step {restart['resume_step']} (failed at {restart['failed_at_step']})"
    )


# local_sgd without checkpoints: no collective on the training group until the end, so the
# survivors wait only on the stop-vote and background-averaging groups, which must carry the
# group timeout too (torch gives new groups gloo's 30-minute default).
@pytest.mark.parametrize(("strategy", "checkpoint_every"), [("ddp", CHECKPOINT_EVERY),
                                                            ("local_sgd", 0)])
def test_sigstop_worker_detected_within_group_timeout(cluster3, strategy, checkpoint_every):
    group_timeout, settle = 8.0, 3.0
    job = start(cluster3, group_timeout=group_timeout, settle_timeout=settle, strategy=strategy,
                local_sgd_every=8 if strategy == "local_sgd" else None,
                checkpoint_every=checkpoint_every)
    wait_for_step(job, 120)
    address, name = victim_of(cluster3, job, rank=2)
    stopped_at = time.time()
    cluster3.signal(name, signal.SIGSTOP, tree=True)  # the whole "device" freezes
    try:
        trained = job.result(timeout=180)
    finally:
        cluster3.signal(name, signal.SIGCONT, tree=True)
    [restart] = restart_events(job)
    detected = restart["time"] - stopped_at
    assert restart["lost_workers"] == [address]
    assert detected <= group_timeout + 5.0, detected
    if checkpoint_every:
        assert restart["repeated_steps"] <= checkpoint_every
    assert job.progress["global_step"] == 750
    assert isinstance(trained, nn.Module)
    assert job.preflight.strategy == strategy
    print(f"\nSIGSTOP ({strategy}): detected after {detected:.2f}s (timeout {group_timeout}s)")


def test_losing_below_min_workers_is_a_clear_error(cluster3) -> None:
    job = start(cluster3, min_workers=3, max_restarts=3)
    wait_for_step(job, 50)
    _, name = victim_of(cluster3, job, rank=1)
    cluster3.signal(name, signal.SIGKILL)
    with pytest.raises(NotEnoughWorkersError, match="need at least 3 worker") as err:
        job.result(timeout=120)
    assert "lost during this job" in str(err.value)
