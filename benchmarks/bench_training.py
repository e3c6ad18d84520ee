"""Training throughput of the Dask-launched engine against a torchrun-style baseline.

Both run the same 2-rank DDP of a small MLP on this machine (gloo over loopback, one torch
thread per rank): the baseline as plain spawned processes with a fixed rendezvous, the engine
on a real local Dask cluster over TLS. A single process on the whole batch is printed too, as
the reference for speed-ups (for a model this small it wins: per-step overhead dominates).
Steady-state steps/s is taken from the progress history
(first to last record, so start-up is excluded); wall time is reported separately.

    python benchmarks/bench_training.py [--steps 2000] [--strategies ddp local_sgd]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BATCH, DIM, CLASSES = 64, 64, 10


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 128), nn.ReLU(), nn.Linear(128, CLASSES))


def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, DIM, generator=g)
    return x, (x[:, 0] > 0).long()


# --------------------------------------------------------------------------- baseline
def _baseline_rank(rank: int, world: int, port: int, steps: int, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, dt.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = make_data(steps * BATCH)
    loss_fn = nn.CrossEntropyLoss()
    local = BATCH // world
    warm = 50
    for s in range(steps):
        if s == warm:
            t0 = time.perf_counter()
        lo = s * BATCH + rank * local
        loss = loss_fn(model(x[lo : lo + local]), y[lo : lo + local])
        opt.zero_grad()
        loss.backward()
        opt.step()
    if rank == 0:
        out.put((steps - warm) / (time.perf_counter() - t0))
    dist.destroy_process_group()


def baseline(steps: int, world: int = 2) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29_000 + os.getpid() % 1000
    procs = [
        ctx.Process(target=_baseline_rank, args=(r, world, port, steps, out)) for r in range(world)
    ]
    for p in procs:
        p.start()
    rate = out.get(timeout=600)
    for p in procs:
        p.join()
    return rate


def single_process(steps: int) -> float:
    """One process, whole global batch, no communication: what a speed-up is measured against."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = make_data(steps * BATCH)
    loss_fn = nn.CrossEntropyLoss()
    warm = 50
    for s in range(steps):
        if s == warm:
            t0 = time.perf_counter()
        lo = s * BATCH
        loss = loss_fn(model(x[lo : lo + BATCH]), y[lo : lo + BATCH])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (steps - warm) / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- engine
def engine(client, strategy: str, steps: int) -> tuple[float, float, object]:
    from parallalx_jupyter.workloads.train import train

    t0 = time.perf_counter()
    job = train(
        make_model,
        make_data(steps * BATCH),
        nn.CrossEntropyLoss(),
        functools.partial(torch.optim.SGD, lr=0.05),
        epochs=1,
        batch_size=BATCH,
        strategy=strategy,
        shares=[1, 1],
        client=client,
        torch_threads=1,
        checkpoint_every=0,
    )
    job.result(600)
    wall = time.perf_counter() - t0
    hist = [h for h in job.history if h["global_step"] >= 50]
    first, last = hist[0], hist[-1]
    rate = (last["global_step"] - first["global_step"]) / (last["time"] - first["time"])
    return rate, wall, job.preflight


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--strategies", nargs="+", default=["ddp", "local_sgd"])
    ap.add_argument("--repeats", type=int, default=12,
                    help="baseline and engine runs alternate this many times; medians of the "
                    "paired ratios are reported (a 2-core machine is noisy: +-10%% per run)")
    args = ap.parse_args()

    import dask
    from distributed import Client, LocalCluster
    from distributed.security import Security

    single = single_process(args.steps)
    print(f"single process, global batch {BATCH}:      {single:8.0f} steps/s")
    sec = Security.temporary()  # local-only benchmark cluster; never shipped to other devices
    repo = str(Path(__file__).resolve().parents[1])
    # the scheduler (in this process) and the workers configured like parallalx's own
    # (cluster/quiet.py): Dask's periodic work slowed down, no statistical profiler
    from parallalx_jupyter.cluster.quiet import QUIET_DASK_CONFIG, quiet_dask_env

    dask.config.set(QUIET_DASK_CONFIG)
    with LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        protocol="tls://",
        host="127.0.0.1",
        security=sec,
        dashboard_address=None,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": repo, **quiet_dask_env()},
    ) as cluster, Client(cluster, security=sec) as client:  # fmt: skip
        report = None
        for strategy in args.strategies:
            ratios, rates, bases = [], [], []
            for _ in range(args.repeats):
                base = baseline(args.steps)
                rate, wall, report = engine(client, strategy, args.steps)
                bases.append(base)
                rates.append(rate)
                ratios.append(rate / base)
                print(f"  baseline {base:6.0f} steps/s | engine {strategy} {rate:6.0f} steps/s "
                      f"| ratio {rate / base:.2f} | wall {wall:.1f}s", flush=True)
            med = statistics.median
            print(
                f"engine {strategy:<10} (Dask over TLS): median {med(rates):6.0f} steps/s vs "
                f"baseline {med(bases):6.0f}: median ratio {med(ratios):.2f} "
                f"(range {min(ratios):.2f}-{max(ratios):.2f}); vs single "
                f"{med(rates) / single:.2f}x"
            )
        print(report)


if __name__ == "__main__":
    main()
