"""The maths: distributed steps equal one big batch; checkpoints resume exactly; errors are clear.

Real two-worker Dask cluster over TLS, real torch.distributed (gloo) inside the workers.
"""

from __future__ import annotations

import copy
import functools
import sys
import threading
import time

import cloudpickle
import pytest
import torch
from torch import nn

from parallalx_jupyter.training import (
    NotEnoughWorkersError,
    TrainingCancelledError,
    UserCodeError,
)
from parallalx_jupyter.training.checkpoint import unpack
from parallalx_jupyter.workloads.base import WorkloadError
from parallalx_jupyter.workloads.train import train

# Classes below are shipped to the workers by value, as a notebook's would be.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)


def make_data(n: int = 65, d: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def make_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 2))


def reference(model: nn.Module, x, y, steps: int, batch: int, lr: float) -> nn.Module:
    """Single-process training on the same global batches (shuffle=False: in order)."""
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    n = x.shape[0]
    for s in range(steps):
        lo = (s * batch) % n
        xb, yb = x[lo : lo + batch], y[lo : lo + batch]
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
    return model


def assert_same_params(a: nn.Module, b: nn.Module, atol: float = 1e-6) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=atol, rtol=1e-5, msg=name)


def run_job(cluster, model, x, y, **kw):
    kw.setdefault("optimizer", functools.partial(torch.optim.SGD, lr=0.5, momentum=0.9))
    kw.setdefault("torch_threads", 1)
    kw.setdefault("metrics_interval", 0.05)
    kw.setdefault("group_timeout", 30.0)
    kw.setdefault("client", cluster.client)
    return train(model, (x, y), nn.CrossEntropyLoss(), **kw)


# 65 samples, global batch 64: step 0 is full, step 1 holds one sample (rank 1 gets none).
@pytest.mark.parametrize(
    ("strategy", "shares", "expected_batches"),
    [("ddp", [1, 1], [32, 32]), ("ddp", [3, 1], [48, 16]), ("fsdp", [3, 1], [48, 16])],
)
def test_two_ranks_equal_one_big_batch(cluster2, strategy, shares, expected_batches) -> None:
    x, y = make_data()
    model = make_model()
    t0 = time.perf_counter()
    job = run_job(
        cluster2, model, x, y, batch_size=64, epochs=1, shuffle=False, strategy=strategy,
        shares=shares,
    )  # fmt: skip
    trained = job.result(timeout=180)
    print(f"{strategy} {shares}: {time.perf_counter() - t0:.1f}s; {job.preflight}")
    assert job.preflight is not None
    assert job.preflight.world_size == 2
    assert job.preflight.strategy == strategy
    assert job.preflight.per_rank_batch == expected_batches
    assert_same_params(trained, reference(model, x, y, steps=2, batch=64, lr=0.5))
    assert job.state == "finished"
    # no checkpoint_dir: nothing will resume from the final state, so it is the model alone
    final = unpack(job._store.latest())
    assert final["optimizer"] == {} and set(final["model"]) == set(model.state_dict())


@pytest.mark.parametrize("strategy", ["ddp", "ddp_fp16"])
def test_one_rank_trains_the_plain_model(cluster2, strategy) -> None:
    # a single rank has nothing to all-reduce: no DDP wrapper, and no fp16 rounding either
    x, y = make_data()
    model = make_model()
    first = sorted(cluster2.client.scheduler_info()["workers"])[0]
    job = run_job(cluster2, model, x, y, batch_size=64, epochs=1, shuffle=False,
                  strategy=strategy, workers=[first])
    trained = job.result(timeout=180)
    assert job.preflight.world_size == 1 and job.preflight.per_rank_batch == [64]
    assert_same_params(trained, reference(model, x, y, steps=2, batch=64, lr=0.5))


def test_fp16_hook_is_close_and_local_sgd_trains(cluster2) -> None:
    x, y = make_data(n=256)
    model = make_model()
    ref = reference(model, x, y, steps=4, batch=64, lr=0.5)
    fp16 = run_job(cluster2, model, x, y, batch_size=64, shuffle=False, strategy="ddp_fp16")
    assert_same_params(fp16.result(180), ref, atol=5e-3)

    x, y = make_data(n=512)
    job = run_job(
        cluster2, model, x, y, batch_size=32, epochs=3, strategy="local_sgd", local_sgd_every=4,
        optimizer=functools.partial(torch.optim.Adam, lr=0.01),
    )  # fmt: skip
    trained = job.result(180)
    assert job.preflight.strategy == "local_sgd" and job.preflight.local_sgd_every == 4
    acc = (trained(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9, acc


def test_checkpoint_resume_equals_uninterrupted_run(cluster2, tmp_path) -> None:
    x, y = make_data(n=200, seed=4)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 2))
    common = dict(
        batch_size=32, epochs=2, shares=[1, 1], checkpoint_every=4, strategy="ddp",
        optimizer=functools.partial(torch.optim.Adam, lr=0.01),
    )  # fmt: skip
    full = run_job(cluster2, model, x, y, checkpoint_dir=tmp_path / "full", **common)
    uninterrupted = full.result(180)
    assert full.progress["global_step"] == 14  # 7 steps/epoch (last one partial) x 2

    part = run_job(cluster2, model, x, y, checkpoint_dir=tmp_path / "cut", max_steps=10, **common)
    part.result(180)
    files = sorted((tmp_path / "cut").glob("checkpoint-*.pt"))
    assert [f.name for f in files] == ["checkpoint-000000008.pt", "checkpoint-000000010.pt"]
    saved = torch.load(files[-1], weights_only=True)
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (1, 3, 10)
    assert saved["optimizer"]["state"]  # a final checkpoint on disk can be resumed from

    resumed_job = run_job(cluster2, model, x, y, checkpoint_dir=tmp_path / "cut", **common)
    resumed = resumed_job.result(180)
    assert resumed_job.history[0]["global_step"] > 10 or resumed_job.progress["global_step"] == 14
    assert_same_params(resumed, uninterrupted, atol=1e-6)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        run_job(cluster2, model, x, y, checkpoint_dir=tmp_path / "cut", resume=False, **common)


class ExplodingModel(nn.Module):
    """A user's model with a bug that only shows on the third batch."""

    def __init__(self, error: type[Exception] = ValueError) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)
        self.calls = 0
        self.error = error

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > 5:  # preflight uses a few calls, then training
            raise self.error("boom: the user's forward failed on purpose")
        return self.lin(x)


# TypeError: its name holds "peer" ("ty-PEER-ror"), which once made it look like a lost peer
@pytest.mark.parametrize("error", [ValueError, TypeError])
def test_user_exception_has_remote_traceback_and_cluster_stays_usable(cluster2, error) -> None:
    x, y = make_data(n=640)
    job = run_job(cluster2, ExplodingModel(error), x, y, batch_size=64, max_restarts=3)
    with pytest.raises(UserCodeError) as err:
        job.result(120)
    text = str(err.value)
    assert "boom: the user's forward failed on purpose" in text
    assert "Remote traceback" in text and "in forward" in text
    assert job.restarts == 0  # user errors are never retried
    assert job.state == "failed"

    ok = run_job(cluster2, make_model(), x, y, batch_size=64, epochs=1, strategy="ddp")
    assert isinstance(ok.result(120), nn.Module)
    assert ok.preflight.world_size == 2


def test_too_few_workers_is_a_clear_error(cluster2) -> None:
    x, y = make_data()
    job = run_job(cluster2, make_model(), x, y, min_workers=3)
    with pytest.raises(NotEnoughWorkersError, match="need at least 3 worker"):
        job.result(60)


def test_a_wrong_share_count_is_refused_before_training(cluster2) -> None:
    x, y = make_data()
    job = run_job(cluster2, make_model(), x, y, shares=[1, 2, 3])
    with pytest.raises(ValueError, match="shares has 3 entries for 2 workers"):
        job.result(60)
    assert job.restarts == 0 and job.preflight is None  # nothing ran


def test_checkpoint_dir_is_checked_first_and_a_failing_disk_costs_no_training(
    cluster2, tmp_path
) -> None:
    x, y = make_data(n=640)
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    with pytest.raises(WorkloadError, match="cannot hold checkpoints"):
        run_job(cluster2, make_model(), x, y, checkpoint_dir=a_file)
    # the directory turns into a file once training has started: every write fails, the
    # checkpoints stay in memory, and the trained model still comes back
    ckpt = tmp_path / "ckpt"
    job = run_job(cluster2, make_model(), x, y, batch_size=64, checkpoint_dir=ckpt,
                  checkpoint_every=2)
    errors: list[str] = []
    job.subscribe(lambda rec: errors.append(rec.get("write_error", "")), {"checkpoint"})
    ckpt.rmdir()
    ckpt.write_text("the disk is full")
    assert isinstance(job.result(120), nn.Module)
    assert errors and all("ckpt" in e for e in errors), errors
    assert job.checkpoint_path is None and job.state == "finished"


class LockedModel(nn.Module):
    """A model holding something that cannot be copied to another process (a lock)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_objects_that_cannot_travel_say_which_and_the_factory_way_out(cluster2) -> None:
    x, y = make_data()
    with pytest.raises(TypeError, match=r"^model cannot be sent to the workers .*model=lambda"):
        run_job(cluster2, LockedModel(), x, y).result(60)
    locked_loss = LockedModel()
    with pytest.raises(TypeError, match=r"^loss_fn cannot be sent to the workers"):
        train(make_model(), (x, y), locked_loss, functools.partial(torch.optim.SGD, lr=0.1),
              client=cluster2.client, torch_threads=1).result(60)
    # the way out the message gives: each device builds its own
    assert isinstance(run_job(cluster2, LockedModel, x, y).result(120), LockedModel)


def test_a_diverged_model_fails_the_job_instead_of_finishing_with_nan_weights(
        cluster2) -> None:
    """QA: a loss that turned NaN finished 'successfully' with every weight NaN, no word."""
    x, y = make_data(n=256)

    def nan_loss(out, target):
        return nn.functional.cross_entropy(out, target) * float("nan")

    job = train(make_model(), (x, y), nan_loss,
                functools.partial(torch.optim.SGD, lr=0.1), client=cluster2.client,
                torch_threads=1, metrics_interval=0.05, epochs=5, batch_size=16, report=False)
    with pytest.raises(UserCodeError, match=r"training diverged: the loss was nan in "):
        job.result(120)
    assert job.state == "failed" and job.restarts == 0  # the user's: never retried


class ExitsInForward(nn.Module):
    """Ends its own process, as a library that calls exit would (QA: retried three times as a
    lost device, then RestartsExhaustedError)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 2)

    def forward(self, x):
        import os

        os._exit(7)


def test_training_code_that_ends_its_process_fails_at_once_with_the_exit_code(cluster2):
    x, y = make_data()
    job = run_job(cluster2, ExitsInForward(), x, y, report=False)
    with pytest.raises(UserCodeError, match=r"rank process exited with code 7 before reporting"):
        job.result(120)
    assert job.restarts == 0


def test_cancel_stops_all_ranks_and_keeps_a_checkpoint(cluster2, tmp_path) -> None:
    x, y = make_data(n=4000)
    job = run_job(
        cluster2, make_model(), x, y, batch_size=8, epochs=50, checkpoint_dir=tmp_path,
        checkpoint_every=0,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while job.progress.get("global_step", 0) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.cancel()
    with pytest.raises(TrainingCancelledError):
        job.result(60)
    assert job.state == "cancelled"
    assert job.checkpoint_path is not None and job.checkpoint_path.exists()
    # the ranks left the process group cleanly: the next job starts at once
    again = run_job(cluster2, make_model(), x[:128], y[:128], batch_size=64)
    again.result(60)
