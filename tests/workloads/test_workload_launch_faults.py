"""``px.launch`` when things go wrong: a device lost mid-run, a rank that hangs."""

from __future__ import annotations

import signal
import sys
import time

import cloudpickle
import pytest

import parallalx_jupyter as px
from parallalx_jupyter.training.launch_rank import HungRankError

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(400)


def resumable(steps: int):  # noqa: ANN201
    """A training loop that checkpoints every 2 steps and resumes from px.restore()."""
    import os
    import time

    import torch
    import torch.distributed as dist

    import parallalx_jupyter as px

    state = px.restore()
    start = int(state["step"]) + 1 if state else 0
    w = state["w"] if state else torch.zeros(3)
    for step in range(start, steps):
        g = torch.ones(3)
        dist.all_reduce(g)  # every step is a collective: a lost peer fails the others
        w = w + g
        px.report(step=step, loss=float(steps - step))
        if step % 2 == 1:
            px.checkpoint({"step": step, "w": w})
        time.sleep(0.25)
    return {"started_from": start, "attempt": int(os.environ["TORCHELASTIC_RESTART_COUNT"]),
            "world": int(os.environ["WORLD_SIZE"]), "w": w}


def test_a_killed_worker_re_forms_the_group_and_fn_resumes_from_restore(
        cluster3, tmp_path) -> None:
    job = px.launch(resumable, 40, client=cluster3.client, report=False,
                    checkpoint_dir=tmp_path / "ckpt")
    deadline = time.monotonic() + 180
    while not any(e.get("kind") == "checkpoint" and e.get("global_step", 0) >= 5
                  for e in job.events):
        assert time.monotonic() < deadline and not job.done(), (job.state, job.events[-3:])
        time.sleep(0.2)
    devices = next(e["devices"] for e in job.events if e.get("devices"))
    cluster3.signal(devices[-1], signal.SIGKILL)  # the last rank's worker (named w0..w2)
    out = job.result(timeout=240)
    assert job.restarts == 1
    assert out["attempt"] == 1 and out["world"] == 2
    assert out["started_from"] >= 6  # resumed from a checkpoint, not from the start
    restart = next(e for e in job.events if e.get("kind") == "restart")
    assert restart["lost_devices"] == [devices[-1]]
    # the checkpoints were written on this (the main) device, atomically, in its format
    assert job.checkpoint_path is not None and job.checkpoint_path.parent == tmp_path / "ckpt"
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))
    # every step after the resume point was done by 2 ranks, the ones before by 3
    first = out["started_from"]
    assert out["w"].tolist() == [3.0 * first + 2.0 * (40 - first)] * 3


def hangs_in_a_collective():  # noqa: ANN201
    import time

    import torch
    import torch.distributed as dist

    if dist.get_rank() == 1:
        time.sleep(3600)  # never reaches the all-reduce the other rank waits in
    t = torch.ones(1)
    dist.all_reduce(t)
    return 1


def hangs_at_the_end():  # noqa: ANN201
    import time

    import torch.distributed as dist

    if dist.get_rank() == 1:
        time.sleep(3600)
    return 1


@pytest.mark.parametrize("fn", [hangs_in_a_collective, hangs_at_the_end])
def test_a_hanging_rank_is_named_by_device_at_the_group_timeout(cluster2, fn) -> None:
    started = time.monotonic()
    job = px.launch(fn, client=cluster2.client, report=False, group_timeout=10)
    with pytest.raises(HungRankError) as info:
        job.result(timeout=200)
    took = time.monotonic() - started
    devices = next(e["devices"] for e in job.events if e.get("devices"))
    assert f"rank 1 on {devices[1]}" in str(info.value)
    assert "group timeout (10 s)" in str(info.value)
    assert job.restarts == 0  # a hang is the function's, not a lost device: never retried
    assert took < 120
