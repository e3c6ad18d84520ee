"""Warm cluster: ``train()`` call -> first training step, against a fresh torchrun-style launch.

The engine runs on a local TLS Dask cluster whose workers are warm (one job has run before,
so torch is imported and the rank forkserver is up): the figure is what a user waits for after
the first job. The baseline launches two fresh processes with a fixed rendezvous, as
``torchrun`` does, and measures launch -> first step in the same run. The engine's phases come
from ``TrainingJob.timeline`` (seconds from the ``train()`` call).

    python benchmarks/bench_first_step.py [--repeats 5]
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

from bench_training import BATCH, make_data, make_model  # noqa: E402


def _baseline_rank(rank: int, world: int, port: int, t0: float, out: mp.Queue) -> None:
    torch.set_num_threads(1)
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, dt.timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    model = nn.parallel.DistributedDataParallel(make_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = make_data(BATCH)
    nn.CrossEntropyLoss()(model(x[: BATCH // world]), y[: BATCH // world]).backward()
    opt.step()
    if rank == 0:
        out.put(time.time() - t0)
    dist.destroy_process_group()


def baseline(world: int = 2) -> float:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = 29_500 + os.getpid() % 1000
    t0 = time.time()
    procs = [ctx.Process(target=_baseline_rank, args=(r, world, port, t0, out))
             for r in range(world)]
    for p in procs:
        p.start()
    seconds = out.get(timeout=120)
    for p in procs:
        p.join()
    return seconds


def engine(client) -> dict[str, float]:
    from parallalx_jupyter.workloads.train import train

    job = train(make_model, make_data(20 * BATCH), nn.CrossEntropyLoss(),
                functools.partial(torch.optim.SGD, lr=0.05), epochs=1, batch_size=BATCH,
                strategy="ddp", client=client, torch_threads=1, checkpoint_every=0,
                report=False)
    job.result(120)
    return dict(job.timeline)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    from distributed import Client, LocalCluster
    from distributed.security import Security

    sec = Security.temporary()  # local-only benchmark cluster; never shipped to other devices
    repo = str(Path(__file__).resolve().parents[1])
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, protocol="tls://",
        host="127.0.0.1", security=sec, dashboard_address=None,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": repo,
             "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"},
    ) as cluster, Client(cluster, security=sec) as client:
        cold = engine(client)
        print(f"first job on fresh workers: first step after {cold['first_step']:.2f}s")
        runs = []
        for _ in range(args.repeats):
            base = baseline()
            warm = engine(client)
            runs.append((base, warm))
            print(f"  torchrun-style launch -> first step {base:.2f}s | warm train() -> first "
                  f"step {warm['first_step']:.2f}s", flush=True)
        med = statistics.median
        phases = {k: med(w[k] for _, w in runs) for k in runs[0][1]}
        print(f"median: torchrun-style {med(b for b, _ in runs):.2f}s, warm train() -> first "
              f"step {phases['first_step']:.2f}s")
        print("median phases (seconds after the train() call): " + ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(phases.items(), key=lambda kv: kv[1])))


if __name__ == "__main__":
    main()
