"""Strategy maths on a real two-rank gloo process group (spawned processes, loopback).

Local SGD's background averaging must give exactly ``average(snapshot) + (p - snapshot)`` at a
fixed step on every rank, and the start-of-training comparison of replicas must notice any
difference. Each rank applies known "optimizer updates", so the expected parameters can be
computed here step by step.
"""

from __future__ import annotations

import datetime as dt
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from parallalx_jupyter.training.rank_process import replicas_identical
from parallalx_jupyter.training.strategies import LocalSGDStrategy, overlap_steps

pytestmark = pytest.mark.timeout(120)

WORLD = 2
STEPS = 11
SAMPLES = [3, 1]  # per step: rank 0 sees 3 samples, rank 1 sees 1 (weights 3/4 and 1/4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
        timeout=dt.timedelta(seconds=30),
    )  # fmt: skip


def _update(rank: int, step: int, p: torch.Tensor, huge: bool = False) -> torch.Tensor:
    """The deterministic 'optimizer update' of ``rank`` at ``step`` from parameters ``p``
    (it depends on ``p``, as a gradient step does, so *when* an average lands matters).
    ``huge``: rank 1 jumps by 1e6 at step 1, beyond what fp16 can carry."""
    pull = 0.1 * (rank + 1)  # rank-dependent: averaging does not commute with the updates
    jump = 1e6 if huge and rank == 1 and step == 1 else 0.0
    return torch.tensor([1.0 + rank + jump, -0.5 * step, 0.25 * (rank + 1) * step]) - pull * p


def expected_local_sgd(
    every: int, overlap: bool, end_known: bool = False, compress: bool = False,
    huge: bool = False,
) -> list[torch.Tensor]:
    """Both ranks' parameters after STEPS steps and a final synchronize, computed directly.

    With ``end_known`` (the run's length given to ``begin``) an average that would land after
    the last step is never started: the final synchronize covers its period. With ``compress``
    the ranks reduce their weighted progress since the common anchor in fp16 (gloo adds two fp16
    values in fp32 and rounds the sum to fp16), the final synchronize too; an average that
    overflows fp16 becomes an exact average of the parameters, weighted like the average that
    overflowed."""
    delay = overlap_steps(every) if overlap else 0
    compress = compress and bool(delay)
    p = [torch.zeros(3) for _ in range(WORLD)]
    w = [s / sum(SAMPLES) for s in SAMPLES]
    anchor = torch.zeros(3)
    pending = None  # (reduced, snapshots, apply_at)
    trained_since_start = False
    for g in range(STEPS):
        p = [p[r] + _update(r, g, p[r], huge) for r in range(WORLD)]
        trained_since_start = True
        if pending is not None and g >= pending[2]:
            reduced, snaps, _ = pending
            pending = None
            if not compress:
                p = [p[r] + (reduced - snaps[r]) for r in range(WORLD)]
            elif torch.isfinite(reduced).all():
                anchor = anchor + reduced.float()
                p = [p[r] + (anchor - snaps[r]) for r in range(WORLD)]
            else:  # weighted like the average that overflowed
                anchor = sum(w[r] * p[r] for r in range(WORLD))
                p = [anchor.clone() for _ in range(WORLD)]
        if (g + 1) % every == 0 and not (end_known and delay and g + delay >= STEPS):
            trained_since_start = False
            snaps = [t.clone() for t in p]
            if compress:
                sent = [(w[r] * (snaps[r] - anchor)).half() for r in range(WORLD)]
                pending = ((sent[0].float() + sent[1].float()).half(), snaps, g + delay)
            elif delay:
                pending = (sum(w[r] * p[r] for r in range(WORLD)), snaps, g + delay)
            else:
                p = [sum(w[r] * p[r] for r in range(WORLD)) for _ in range(WORLD)]
    if pending is not None:
        reduced, snaps, _ = pending
        if compress:
            anchor = anchor + reduced.float()
            reduced = anchor
        p = [p[r] + (reduced - snaps[r]) for r in range(WORLD)]
    if trained_since_start:  # final synchronize: weighted average since the last sync start
        sent = [(w[r] * (p[r] - anchor)).half() for r in range(WORLD)]
        reduced = (sent[0].float() + sent[1].float()).half()
        if compress and torch.isfinite(reduced).all():  # fp16 progress, like the others
            avg = anchor + reduced.float()
        else:
            avg = sum(w[r] * p[r] for r in range(WORLD))
        p = [avg.clone() for _ in range(WORLD)]
    return p


def _local_sgd_rank(
    rank: int, port: int, every: int, overlap: bool, end_known: bool, compress: bool,
    huge: bool, out: mp.Queue,
) -> None:
    _init(rank, port)
    model = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    strategy = LocalSGDStrategy(every, overlap=overlap, timeout_s=30, compress=compress)
    model = strategy.wrap(model, torch.device("cpu"))
    strategy.begin(model, STEPS if end_known else 10**9)
    for g in range(STEPS):
        with torch.no_grad():
            step = _update(rank, g, model.weight.view(-1), huge).view(1, 3)
            model.weight.add_(step)
        strategy.after_step(model, g, SAMPLES[rank], sum(SAMPLES))
    in_flight = strategy._pending is not None
    strategy.synchronize(model)
    # plain numbers: a tensor in a multiprocessing queue travels as a file descriptor this
    # process must still be alive to hand over, and it exits right after
    out.put((rank, (model.weight.detach().view(-1).tolist(), in_flight)))
    dist.destroy_process_group()


def _run(target, *args) -> dict[int, object]:  # noqa: ANN001
    # fresh rank processes for every case, forked from a server that has imported torch once
    # (spawn would import it again in each: seconds of CPU per rank)
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", __name__])
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, port, *args, out)) for r in range(WORLD)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=90) for _ in range(WORLD))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return results


CASES = [  # every, overlap, end_known, compress, huge
    (4, True, False, False, False), (5, True, False, False, False),
    (4, False, False, False, False), (3, True, False, False, False),
    (5, True, True, False, False), (4, True, False, True, False), (5, True, True, True, False),
    (3, True, False, True, True),
]


@pytest.mark.parametrize(("every", "overlap", "end_known", "compress", "huge"), CASES)
def test_local_sgd_average_is_applied_at_a_fixed_step(
    every: int, overlap: bool, end_known: bool, compress: bool, huge: bool
) -> None:
    got = {r: (torch.tensor(w), f) for r, (w, f) in
           _run(_local_sgd_rank, every, overlap, end_known, compress, huge).items()}
    want = expected_local_sgd(every, overlap, end_known, compress, huge)
    for r in range(WORLD):
        torch.testing.assert_close(got[r][0], want[r], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got[0][0], got[1][0])  # one model after synchronize
    assert torch.isfinite(got[0][0]).all()
    # the last start (step 9 of 11 for every=5) lands after the end: skipped when it is known
    left_in_flight = overlap and (STEPS // every) * every - 1 + overlap_steps(every) >= STEPS
    assert got[0][1] == got[1][1] == (left_in_flight and not end_known)


def test_overlap_keeps_what_each_rank_learnt_meanwhile() -> None:
    # the overlapped and the blocking variants genuinely differ (the test above is not vacuous)
    assert not torch.allclose(expected_local_sgd(4, True)[0], expected_local_sgd(4, False)[0])
    # fp16 progress is close to the fp32 average, but not the same maths (not vacuous either)
    exact, fp16 = expected_local_sgd(4, True)[0], expected_local_sgd(4, True, compress=True)[0]
    assert not torch.equal(exact, fp16)
    torch.testing.assert_close(exact, fp16, atol=1e-2, rtol=1e-3)
    # an fp16 overflow falls back to an exact average instead of spreading inf to every rank
    assert torch.isfinite(expected_local_sgd(3, True, compress=True, huge=True)[0]).all()
    # Skipping the average that would land after the end (STEPS 11, every 5: the start at step
    # 9) loses nothing: the final exact average covers it (whether it ran moves no parameter,
    # so the rank reports whether one was left in flight at the end, see below).
    torch.testing.assert_close(expected_local_sgd(5, True)[0], expected_local_sgd(5, True, True)[0])


def _replicas_rank(rank: int, port: int, differ: bool, out: mp.Queue) -> None:
    _init(rank, port)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    if differ and rank == 1:
        with torch.no_grad():
            model[1].running_mean[3] += 1e-7  # one buffer element, one ulp-scale change
    state = list(model.parameters()) + list(model.buffers())
    out.put((rank, replicas_identical(state)))
    dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_replicas_are_compared_not_assumed(differ: bool) -> None:
    got = _run(_replicas_rank, differ)
    assert got == {0: not differ, 1: not differ}
