"""A reused checkpoint_dir: the same unfinished job resumes and says so, a finished run is set
aside and the job starts fresh, another job's checkpoint is one clear error at once (never a
retry), and the hyper-parameters asked now win over the checkpoint's.

The cluster tests use a real two-worker Dask cluster over TLS and real gloo process groups; one
finished 8-step run (checkpoints at steps 6 and 8) is copied into each test's own directory.
"""

from __future__ import annotations

import functools
import shutil
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
from torch import nn

from parallalx_jupyter.training import CheckpointMismatchError, UserCodeError
from parallalx_jupyter.training.checkpoint import (
    CheckpointStore,
    make_checkpoint,
    pack,
    unpack,
    write_atomic,
)
from parallalx_jupyter.training.resume import (
    differences,
    fingerprint,
    model_params,
    plan_resume,
)
from parallalx_jupyter.workloads.train import train

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)

N, BATCH, EPOCHS = 64, 16, 2  # 4 steps per epoch, 8 in all
GROUP_TIMEOUT = 60.0


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(N, 6, generator=g)
    return x, (x[:, 0] > 0).long()


def make_model(hidden: int = 16) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, 2))


def sgd(lr: float) -> functools.partial:
    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9)


def run_job(cluster, ckpt: Path, model=None, lr: float = 0.5, **kw):
    x, y = make_data()
    kw = {"batch_size": BATCH, "epochs": EPOCHS, "checkpoint_every": 3, "torch_threads": 1,
          "metrics_interval": 0.05, "group_timeout": GROUP_TIMEOUT, "strategy": "ddp",
          "shares": [1, 1], **kw}
    return train(make_model() if model is None else model, (x, y), nn.CrossEntropyLoss(),
                 sgd(lr), checkpoint_dir=ckpt, client=cluster.client, report=False, **kw)


def trained_samples(job) -> int:
    return sum((job.progress.get("samples_by_worker") or {}).values())


def resume_records(job) -> list[dict]:
    return [e for e in job.events if e.get("kind") == "resume"]


@pytest.fixture(scope="module")
def finished_run(cluster2, tmp_path_factory):
    """(directory, trained model) of one finished run: checkpoint files at steps 6 and 8."""
    ckpt = tmp_path_factory.mktemp("finished") / "ckpt"
    job = run_job(cluster2, ckpt)
    model = job.result(180)
    assert [f.name for f in sorted(ckpt.glob("checkpoint-*.pt"))] == [
        "checkpoint-000000006.pt", "checkpoint-000000008.pt"]
    return ckpt, model


def unfinished_copy(finished: Path, tmp_path: Path) -> Path:
    """The run as a crash after step 6 would leave it: the final checkpoint never written."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished, ckpt)
    (ckpt / "checkpoint-000000008.pt").unlink()
    return ckpt


# --------------------------------------------------------------------------- on the cluster
def test_finished_run_is_set_aside_and_the_job_trains_again(cluster2, finished_run, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(finished_run[0], ckpt)
    job = run_job(cluster2, ckpt)
    model = job.result(180)
    (record,) = resume_records(job)
    assert record["action"] == "fresh", record
    assert (f"checkpoint_dir {ckpt} holds a finished run (step 8 of 8, checkpoint-000000008.pt)"
            ": starting fresh") in record["text"]
    assert job.resume_notes[0] == record["text"]
    # the old run's files are kept aside, the new run's are the only ones on top
    (aside,) = ckpt.glob("finished-*")
    assert sorted(f.name for f in aside.iterdir()) == [
        "checkpoint-000000006.pt", "checkpoint-000000008.pt"]
    assert record["set_aside"] == str(aside)
    newest = unpack((ckpt / "checkpoint-000000008.pt").read_bytes())
    assert newest["meta"]["job_id"] == job.id and newest["meta"]["finished"]
    assert trained_samples(job) == EPOCHS * N  # all 8 steps again, not 0
    for a, b in zip(model.parameters(), finished_run[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)  # same job, same result


def test_unfinished_same_job_resumes_and_says_from_where(cluster2, finished_run, tmp_path):
    ckpt = unfinished_copy(finished_run[0], tmp_path)
    job = run_job(cluster2, ckpt)
    model = job.result(180)
    (record, *loaded) = resume_records(job)
    assert record["action"] == "resume" and record["step"] == 6
    assert record["text"] == f"resuming from step 6 of {ckpt / 'checkpoint-000000006.pt'}"
    assert "the same job" in record["fingerprint"]
    assert [r["hyperparameters"] for r in loaded] == [[]]  # lr as before: nothing to say
    assert trained_samples(job) == 2 * BATCH  # steps 7 and 8 only
    for a, b in zip(model.parameters(), finished_run[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)  # as if never interrupted


def test_asked_lr_wins_over_the_checkpoints(cluster2, finished_run, tmp_path):
    ckpt = unfinished_copy(finished_run[0], tmp_path)
    job = run_job(cluster2, ckpt, lr=0.7)
    job.result(180)
    final = unpack((ckpt / "checkpoint-000000008.pt").read_bytes())
    assert [g["lr"] for g in final["optimizer"]["param_groups"]] == [0.7]  # trained at 0.7
    assert "lr 0.7 as asked (the checkpoint had 0.5)" in job.resume_notes


def test_changed_model_is_one_clear_error_at_once(cluster2, finished_run, tmp_path):
    ckpt = unfinished_copy(finished_run[0], tmp_path)
    wider = "parameter 0.weight has shape (16, 6) in the checkpoint, (32, 6) now"
    # a module: refused in the notebook, before anything is sent to the cluster
    t0 = time.monotonic()
    job = run_job(cluster2, ckpt, model=make_model(hidden=32), max_restarts=3)
    with pytest.raises(CheckpointMismatchError) as err:
        job.result(60)
    assert wider in str(err.value) and "use another checkpoint_dir" in str(err.value).lower()
    assert time.monotonic() - t0 < 10
    assert job.restarts == 0 and job.preflight is None and job.state == "failed"
    # a factory: only the ranks can tell, before their preflight; a user error, not retried
    t0 = time.monotonic()
    job = run_job(cluster2, ckpt, model=lambda: make_model(hidden=32), max_restarts=3)
    with pytest.raises(CheckpointMismatchError) as err:
        job.result(120)
    assert wider in str(err.value) and "rank 0" in str(err.value)
    assert time.monotonic() - t0 < GROUP_TIMEOUT
    assert job.restarts == 0 and job.preflight is None
    assert sorted(f.name for f in ckpt.iterdir()) == ["checkpoint-000000006.pt"]  # untouched


def test_a_checkpoint_that_does_not_load_is_the_users_error(cluster2, finished_run, tmp_path):
    # A checkpoint from before fingerprints: nothing to compare the model with, so loading it
    # fails on the ranks, which is the user's mistake and must not be retried as a lost device.
    ckpt = unfinished_copy(finished_run[0], tmp_path)
    path = ckpt / "checkpoint-000000006.pt"
    state = unpack(path.read_bytes())
    for key in ("fingerprint", "total_steps", "finished"):
        del state["meta"][key]
    write_atomic(path, pack(state))
    job = run_job(cluster2, ckpt, model=lambda: make_model(hidden=32), max_restarts=2)
    with pytest.raises(UserCodeError, match="loading the checkpoint") as err:
        job.result(120)
    assert "size mismatch" in str(err.value)
    assert job.restarts == 0
    assert "not checked" in resume_records(job)[0]["fingerprint"]


# --------------------------------------------------------------------------- the decision alone
def _store_with(tmp_path: Path, step: int, total: int, **meta) -> CheckpointStore:
    model = make_model()
    state = make_checkpoint(
        model_state=model.state_dict(), optimizer_state={}, epoch=0, step=step,
        global_step=step, rng=[],
        meta={"job_id": "old", "total_steps": total, "finished": step == total, **meta},
    )  # fmt: skip
    store = CheckpointStore(tmp_path / "ckpt")
    store.put(pack(state), step)
    return CheckpointStore(tmp_path / "ckpt")  # as a new job finds it


def _now(model: nn.Module | None = None, dataset_len: int | None = N) -> dict:
    return fingerprint(params=model_params(model or make_model()), optimizer="SGD",
                       dataset_len=dataset_len, global_batch=BATCH)


def test_plan_resume_cases(tmp_path) -> None:
    saved = _now()
    store = _store_with(tmp_path / "a", 6, 8, fingerprint=saved)
    plan = plan_resume(store, _now(), epochs=EPOCHS, max_steps=None)
    assert (plan.action, plan.step) == ("resume", 6) and "the same job" in plan.checked
    # more steps asked of a finished run: it continues (e.g. max_steps raised)
    store = _store_with(tmp_path / "b", 8, 8, fingerprint=saved)
    assert plan_resume(store, _now(), epochs=3, max_steps=None).action == "resume"
    # the same steps: finished, set aside (also when the data set is a factory: unknown here)
    plan = plan_resume(store, _now(dataset_len=None), epochs=EPOCHS, max_steps=None)
    assert plan.action == "fresh" and store.files() == [] and store.latest() is None
    assert plan.set_aside is not None and len(list(plan.set_aside.iterdir())) == 1
    # another job's unfinished run: one error naming each difference
    store = _store_with(tmp_path / "c", 6, 8, fingerprint=saved)
    other = fingerprint(params=model_params(make_model(hidden=8)), optimizer="Adam",
                        dataset_len=N + 1, global_batch=BATCH)
    with pytest.raises(CheckpointMismatchError) as err:
        plan_resume(store, other, epochs=EPOCHS, max_steps=None)
    for part in ("parameter 0.weight has shape (16, 6) in the checkpoint, (8, 6) now",
                 "optimizer SGD in the checkpoint, Adam now",
                 f"data set length {N} in the checkpoint, {N + 1} now"):
        assert part in str(err.value)
    # a checkpoint from before fingerprints resumes, saying it was not checked
    store = _store_with(tmp_path / "d", 6, 8, dataset_len=N, global_batch=BATCH)
    plan = plan_resume(store, _now(make_model(hidden=8)), epochs=EPOCHS, max_steps=None)
    assert plan.action == "resume" and plan.checked.startswith("not checked")


def test_differences_skip_what_is_unknown() -> None:
    saved = _now()
    assert differences(saved, fingerprint(params=None, optimizer=None, dataset_len=None,
                                          global_batch=BATCH)) == []
    lazy = fingerprint(params=model_params(nn.LazyLinear(2)), optimizer=None, dataset_len=None,
                       global_batch=None)
    assert differences(lazy, _now(nn.Linear(6, 2))) == []  # shapes unknown before a forward
    many = differences(saved, _now(nn.Linear(3, 3)))
    assert len(many) == 6 and many[-1] == "1 more difference(s)"
