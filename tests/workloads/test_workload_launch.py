"""``px.launch``: the user's own function on every worker of a real two-worker TLS cluster."""

from __future__ import annotations

import sys
import threading

import cloudpickle
import pytest

import parallalx_jupyter as px
from parallalx_jupyter.training.errors import UserCodeError

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(300)

TORCHRUN = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
            "MASTER_PORT", "GROUP_RANK", "TORCHELASTIC_RUN_ID")


def test_without_a_cluster_the_message_is_train_s(monkeypatch, tmp_path) -> None:
    """First in this module: no cluster fixture (and so no default Dask client) exists yet."""
    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path))
    with pytest.raises(RuntimeError, match="no Dask client given and no parallalx cluster on "
                       "this device.*Pass client="):
        px.launch(no_distributed, 1, report=False)


def torchrun_view():  # noqa: ANN201
    """What a torchrun script sees: its environment, and a group it may initialise again."""
    import os

    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")  # as a torchrun script does: must not break
    env = {k: os.environ[k] for k in TORCHRUN}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, env)
    total = torch.tensor([float(dist.get_rank() + 1)])
    dist.all_reduce(total)
    dist.destroy_process_group()
    return {"envs": gathered, "sum": float(total.item())}


def test_every_rank_gets_torchrun_env_and_a_working_group(cluster2) -> None:
    job = px.launch(torchrun_view, client=cluster2.client, report=False)
    out = job.result(timeout=180)
    envs = out["envs"]
    assert out["sum"] == 3.0  # 1 + 2: a real all-reduce over both ranks
    assert [e["RANK"] for e in envs] == ["0", "1"]
    assert {e["WORLD_SIZE"] for e in envs} == {"2"}
    # both workers are on 127.0.0.1: one node, two local ranks
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1"]
    assert {e["LOCAL_WORLD_SIZE"] for e in envs} == {"2"}
    assert {e["GROUP_RANK"] for e in envs} == {"0"}
    assert {e["MASTER_ADDR"] for e in envs} == {"127.0.0.1"}
    assert len({e["MASTER_PORT"] for e in envs}) == 1 and int(envs[0]["MASTER_PORT"]) > 0
    assert {e["TORCHELASTIC_RUN_ID"] for e in envs} == {job.id}
    assert job.state == "finished" and job.workload == "launch"


def ddp_loop(steps: int, lr: float = 0.1):  # noqa: ANN201
    """Plain DDP with an LR schedule, as a user writes it for torchrun; reports each step."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import parallalx_jupyter as px

    torch.manual_seed(0)
    model = DDP(torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    g = torch.Generator().manual_seed(100 + dist.get_rank())
    x = torch.randn(32, 4, generator=g)
    y = x.sum(1, keepdim=True)
    for step in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        px.report(step=step + 1, loss=loss, lr=sched.get_last_lr()[0])
    weight = model.module.weight.detach().clone()
    return {"rank": dist.get_rank(), "lr": sched.get_last_lr()[0], "weight": weight}


def test_plain_ddp_returns_rank_0s_value_and_reports_reach_the_job(cluster2) -> None:
    seen: list[dict] = []
    job = px.launch(ddp_loop, 6, client=cluster2.client, report=False, lr=0.05)
    job.subscribe(seen.append, {"progress"})
    out = job.result(timeout=180)
    assert out["rank"] == 0
    assert out["lr"] == pytest.approx(0.05 * 0.5 ** 3)
    assert tuple(out["weight"].shape) == (1, 4)  # a tensor, back as data
    steps = [h["step"] for h in job.history]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert all(isinstance(h["loss"], float) for h in job.history)
    assert job.history[-1]["lr"] == pytest.approx(0.05 * 0.5 ** 3)
    assert job.history[-1]["loss"] < job.history[0]["loss"]
    assert len(seen) == 6  # subscribers get every report as it happens
    # where the time went, as train()'s jobs say it: seconds from the call, in order
    order = ["probed", "submitted", "rank_process", "process_group", "fn_start", "fn_end"]
    assert [k for k in job.timeline if k in order] == order, job.timeline
    assert 0 < job.timeline["fn_start"] < job.timeline["fn_end"] < 180
    # the same result as one process doing the maths of both ranks' data (DDP averages)
    import torch

    torch.manual_seed(0)
    ref = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(ref.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    data = []
    for r in range(2):
        g = torch.Generator().manual_seed(100 + r)
        x = torch.randn(32, 4, generator=g)
        data.append((x, x.sum(1, keepdim=True)))
    for _ in range(6):
        opt.zero_grad()
        loss = sum(torch.nn.functional.mse_loss(ref(x), y) for x, y in data) / 2
        loss.backward()
        opt.step()
        sched.step()
    assert torch.allclose(out["weight"], ref.weight.detach(), atol=1e-5)


def no_distributed(a: int, b: int = 0):  # noqa: ANN201
    return a * 10 + b


def test_a_function_that_never_uses_torch_distributed_works(cluster2) -> None:
    job = px.launch(no_distributed, 4, b=2, client=cluster2.client, report=False)
    assert job.result(timeout=180) == 42


def ends_like_a_torchrun_script(steps: int):  # noqa: ANN201
    import torch
    import torch.distributed as dist
    from torch import nn

    model = nn.parallel.DistributedDataParallel(nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        model(torch.randn(4, 8)).sum().backward()
        opt.step()
    dist.destroy_process_group()  # as most torchrun scripts (and Accelerate) end
    return dist.get_rank() if dist.is_initialized() else -1


def test_destroying_the_group_at_the_end_is_harmless(cluster2) -> None:
    """Before: gloo's shutdown raced the other rank's last all-reduce and hung it until the
    group timeout (3 of 5 launches failed as HungRankError). The engine owns the group."""
    for _ in range(4):
        job = px.launch(ends_like_a_torchrun_script, 20, client=cluster2.client, report=False,
                        group_timeout=10)
        assert job.result(timeout=120) == 0


def fails_on_rank_1():  # noqa: ANN201
    import torch.distributed as dist

    if dist.get_rank() == 1:
        raise ValueError("bad shape on this rank")
    dist.barrier()
    return "never"


def test_a_user_exception_comes_back_at_once_with_rank_device_and_traceback(cluster2) -> None:
    job = px.launch(fails_on_rank_1, client=cluster2.client, report=False)
    with pytest.raises(UserCodeError) as info:
        job.result(timeout=180)
    text = str(info.value)
    assert info.value.rank == 1
    assert "ValueError: bad shape on this rank" in text
    assert "fails_on_rank_1" in text and "Remote traceback" in text
    devices = next(e["devices"] for e in job.events if e.get("devices"))  # in rank order
    assert f"on rank 1 ({devices[1]} (" in text  # the device's (here: the worker's) name
    assert text.count("bad shape on this rank") == 2  # the message and the traceback's line
    assert job.restarts == 0 and job.state == "failed"


def test_a_function_that_cannot_be_sent_is_named_with_the_way_out(cluster2) -> None:
    lock = threading.Lock()

    def holds_a_lock():  # noqa: ANN202
        with lock:
            return 1

    with pytest.raises(TypeError, match=r"^fn cannot be sent to the workers .*inside the function"):
        px.launch(holds_a_lock, client=cluster2.client, report=False)
    with pytest.raises(TypeError, match=r"^fn's keyword argument 'guard' cannot be sent"):
        px.launch(no_distributed, 1, guard=lock, client=cluster2.client, report=False)


def chatty(lines: int) -> int:
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    rank = dist.get_rank()
    print(f"rank {rank} starts")
    print(f"rank {rank} complains", file=sys.stderr)
    subprocess.run(["echo", f"a child process of rank {rank}"], check=True)  # fd 1, not sys
    print("\x1b[31mcoloured\x1b[0m\x1b]0;a terminal title\x07")  # never reaches a terminal
    for i in range(lines):
        print(f"rank {rank} line {i} " + "x" * 100)
    os.write(1, b"no newline at the end")
    return rank


def test_what_each_rank_prints_reaches_the_job_in_order_and_rate_capped(cluster2) -> None:
    job = px.launch(chatty, 5, client=cluster2.client, report=False)
    assert job.result(timeout=180) == 0
    for rank in (0, 1):
        mine = [line for r, _d, s, line in job.output if r == rank and s == "stdout"]
        assert mine[0] == f"rank {rank} starts"
        assert f"a child process of rank {rank}" in mine and "coloured" in mine
        assert [m for m in mine if " line " in m] == [
            f"rank {rank} line {i} " + "x" * 100 for i in range(5)]
        assert mine[-1] == "no newline at the end"
        streams = {s for r, _d, s, line in job.output if r == rank and "complains" in line}
        assert streams == {"stderr"}
    assert "[rank 1 " in job.output_text()  # every line after its rank (and device)
    assert all(e.get("kind") != "output" for e in job.events)  # kept as lines only

    # a rank printing ~3 MB at once: the burst goes through, the rest is said to be left out
    job = px.launch(chatty, 30_000, client=cluster2.client, report=False)
    assert job.result(timeout=180) == 0
    text = job.output_text(rank=0)
    assert "bytes of stdout left out: more than 64 kB/s" in text
    assert len(text) < 1_000_000


def many_reports(n: int) -> int:
    import time

    import parallalx_jupyter as px

    for step in range(1, n + 1):
        px.report(step=step, loss=1.0 / step)
        time.sleep(0.002)
    px.report(step=n + 1, loss=0.0)  # the last one, right before returning
    return n


def test_frequent_reports_travel_in_batches_and_keep_their_order_and_spacing(cluster2) -> None:
    from parallalx_jupyter.training import launch_driver

    batches: list[int] = []
    original = launch_driver.LaunchDriver._handle_control

    def counting(self, msg):  # noqa: ANN001, ANN202 - the driver's own method, observed
        if msg.get("kind") == "report":
            batches.append(len(msg.get("batch") or [1]))
        return original(self, msg)

    launch_driver.LaunchDriver._handle_control = counting
    try:
        job = px.launch(many_reports, 300, client=cluster2.client, report=False)
        assert job.result(timeout=180) == 300
    finally:
        launch_driver.LaunchDriver._handle_control = original
    assert [h["step"] for h in job.history] == list(range(1, 302))  # every one, in order
    assert sum(batches) == 301 and len(batches) < 301 // 5  # far fewer messages than reports
    times = [h["time"] for h in job.history]
    assert all(b >= a for a, b in zip(times, times[1:], strict=False))
    assert times[-1] - times[0] > 0.5  # spaced as they were made, not bunched per batch


def leaves_a_child_behind() -> str:
    import subprocess

    # a process that outlives the function and keeps the rank's stdout open
    subprocess.Popen(["sleep", "20"])
    print("started a sleeper")
    return "ok"


def test_a_child_process_holding_stdout_does_not_hold_the_job(cluster2) -> None:
    import time

    t0 = time.monotonic()
    job = px.launch(leaves_a_child_behind, client=cluster2.client, report=False)
    assert job.result(timeout=120) == "ok"
    assert time.monotonic() - t0 < 15  # not the sleeper's 20 s
    assert "started a sleeper" in job.output_text(rank=0)
