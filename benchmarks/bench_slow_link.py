"""Benchmark (c): two devices over a rate-limited link vs one device and vs torchrun-style DDP.

Protocol of issue #18, time to a target test accuracy:

* **Real separate hosts.** ``../shared/tools/netns-hosts up 2 RATE`` (default 1gbit) makes two
  network namespaces (10.77.0.1, 10.77.0.2) joined through a bridge with a ``tc tbf`` limit on
  every link, so every byte between the two devices crosses the limited link. The Dask
  scheduler and the driver (this script's ``--inner`` process) run in host 1, unpinned; one Dask
  worker in each host.
* **Each device on its own core.** Host 1's worker is pinned with ``taskset -c 0``, host 2's with
  ``taskset -c 1``, ``OMP_NUM_THREADS=1`` and ``train(torch_threads=1)``: the rank processes the
  workers start inherit the pin. Without it the two "devices" and the driver float over the
  machine's cores and one device alone quietly borrows the second core (intra-op threads, the
  kernel's scheduler), which is not what a second physical device adds.
* **Three configurations in the same run**, one after the other for every shuffle seed and
  repeat (one paired triple): one device alone (``train(..., workers=[host 1's worker])``), two
  devices with ``strategy="auto"`` and no ``workers=`` (``auto`` may keep one device: its
  ``preflight.placement`` / ``preflight.idle`` are recorded), and a **torchrun-style DDP peer**:
  two plain processes (one per host, pinned like the workers), a fixed ``tcp://`` rendezvous,
  gloo over the hosts' ``eth0``, each rank the contiguous half of every global batch, plain DDP,
  the same model, data, batch and optimizer, evaluated on rank 0 after each epoch. The peer is
  what a user gets without parallalx on the same two devices and link; beating one device is not
  enough if hand-written DDP beats parallalx.
* **Time to target.** For parallalx a search run per configuration finds the first epoch whose
  model reaches the target (a checkpoint per epoch, evaluated in the driver), then exactly that
  training, without checkpoints, is timed from the ``train()`` call to the trained model. The
  peer stops at the end of the first epoch rank 0 evaluates at or above the target; its time is
  from the start of its training loop (after process start, imports and the process group; its
  evaluation time excluded), and its wall time from the launch (start-up included) is reported
  separately.
* **Paired medians.** On a shared 2-core VM a single run varies by +-15 % and the shuffle seed
  alone moves the epoch at which a target is reached by one or two (one test digit is 0.28 %),
  so the ratios two/one and two/peer are taken within each triple and the median over all
  triples of all seeds (``--seeds``, ``--repeats``) is reported.
* **Predicted vs measured.** Every timed parallalx run prints ``preflight.predicted_steps_per_s``
  and ``preflight.measured_steps_per_s`` (goal: within +-25 %).
* **Physical bound.** The same two pinned processes train the workload with no communication at
  all: first one of them alone at the full batch, then both at the same time at half the batch
  each. Steps/s full-batch alone / steps/s half-batch concurrent is the best time ratio two
  devices can reach per epoch on this machine (both cores share caches and memory bandwidth).

Workloads (``--workloads``): ``mlp17m`` the 17.1M-parameter MLP 64-4096-4096-10 on scikit-learn's
digits (batch 128, SGD lr 0.04 momentum 0.9, target 0.95: ~68 MB of gradients per step, so
communication dominates); ``cnn`` digits upsampled to 32x32 with a 66k-parameter three-layer
conv net (batch 128, Adam lr 3e-3, target 0.95: compute dominates); ``demo`` the demo's MLP
64-128-10 (batch 64, Adam lr 3e-3, target 0.95: overhead dominates, ``auto`` should keep one
device).

    python benchmarks/bench_slow_link.py [--workloads mlp17m,cnn,demo] [--seeds 0,1,2]  # as root

Needs root and iproute2. ``--netns-prefix`` (default ``pxb``) keeps these hosts apart from
other sets of netns hosts on the same machine.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NETNS = REPO.parent / "shared" / "tools" / "netns-hosts"
PORT = 8786
PEER_PORT = 29500
HOST1 = "10.77.0.1"
IFNAME = "eth0"  # the interface of every netns host (``ip -o addr`` inside one)

#: name -> settings; ``goal_one`` / ``goal_peer``: time of two devices vs one / vs the peer
WORKLOADS: dict[str, dict] = {
    "mlp17m": dict(model="mlp17m", data="digits8", batch=128, opt="sgd", lr=0.04, target=0.95,
                   max_epochs=15, goal_one=0.85, goal_peer=0.35),
    "cnn": dict(model="cnn", data="digits32", batch=128, opt="adam", lr=3e-3, target=0.95,
                max_epochs=15, goal_one=0.65, goal_peer=1.0),
    "demo": dict(model="demo", data="digits8", batch=64, opt="adam", lr=3e-3, target=0.95,
                 max_epochs=15, goal_one=1.1, goal_peer=None),
}
SPEED_TOLERANCE = 0.25  # predicted vs measured steps/s


# --------------------------------------------------------------------------- workloads
def make_mlp17m():  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 10))


def make_cnn():  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32x32 -> 16x16
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 8x8
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # -> 4x4
        nn.Flatten(), nn.Linear(64 * 16, 10),
    )


def make_demo():  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


MODELS = {"mlp17m": make_mlp17m, "cnn": make_cnn, "demo": make_demo}


def dataset(kind: str):  # noqa: ANN201
    """scikit-learn's digits (no download): 1437 training and 360 test samples."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    f = functools.partial(torch.as_tensor, dtype=torch.float32)
    x_tr, x_te = f(x_tr) / 16.0, f(x_te) / 16.0
    if kind == "digits32":
        def up(t):  # noqa: ANN001, ANN202
            t = torch.nn.functional.interpolate(t.reshape(-1, 1, 8, 8), size=(32, 32),
                                                mode="bilinear", align_corners=False)
            return t.contiguous()

        x_tr, x_te = up(x_tr), up(x_te)
    return x_tr, torch.as_tensor(y_tr), x_te, torch.as_tensor(y_te)


def optimizer(w: dict):  # noqa: ANN201
    import torch

    if w["opt"] == "sgd":
        return functools.partial(torch.optim.SGD, lr=w["lr"], momentum=0.9)
    return functools.partial(torch.optim.Adam, lr=w["lr"])


def accuracy(model, x, y) -> float:  # noqa: ANN001
    import torch

    # an exact fraction: a float32 mean makes 342/360 0.94999999, which "misses" a 0.95 target
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parallalx (host 1)
def _kwargs(client, workers: list[str] | None, w: dict, epochs: int, seed: int) -> dict:  # noqa: ANN001
    """The same call for one device and for two: only ``workers`` (and the strategy) differ."""
    kw = dict(epochs=epochs, batch_size=w["batch"], client=client, torch_threads=1,
              group_timeout=120.0, report=False, seed=seed)
    if workers is not None:
        kw["workers"] = workers
    return kw


def _device(worker: str) -> str:
    return "device1" if HOST1 in worker else "device2"


def _preflight(job) -> dict:  # noqa: ANN001
    """What the preflight decided: which devices train, the strategy, predicted/measured speed
    (a placement remembered from an earlier run of the same job reports only the chosen)."""
    report = job.preflight
    if report is None:
        return {"placement": "?", "devices": [], "strategy": "?", "predicted": 0.0,
                "measured": 0.0}
    idle = list(report.idle)
    chosen = [_device(d.worker) for d in report.devices]
    strategy = report.strategy + (f"/{report.local_sgd_every}" if report.local_sgd_every else "")
    if len(chosen) == 1:
        label = f"1 device ({chosen[0]})"
    else:
        label = f"{len(chosen)} devices, {strategy}"
    return {"placement": label, "devices": chosen, "strategy": strategy,
            "idle": [_device(w) for w in idle], "note": report.placement,
            "predicted": report.predicted_steps_per_s, "measured": report.measured_steps_per_s,
            "report": str(report)}


def search(client, w: dict, workers: list[str] | None, target: float,  # noqa: ANN001
           max_epochs: int, seed: int) -> dict:
    """First epoch at which the test accuracy reaches ``target`` (a checkpoint per epoch)."""
    from torch import nn

    from parallalx_jupyter.training import TrainingCancelledError
    from parallalx_jupyter.training.checkpoint import unpack
    from parallalx_jupyter.workloads.train import train

    x_tr, y_tr, x_te, y_te = dataset(w["data"])
    steps_per_epoch = -(-len(x_tr) // w["batch"])
    curve: list[tuple[int, float]] = []
    evaluator = MODELS[w["model"]]()
    job = None

    def on_record(rec: dict) -> None:
        if rec.get("kind") != "checkpoint" or rec["global_step"] % steps_per_epoch:
            return
        evaluator.load_state_dict(unpack(job._store.latest())["model"])
        acc = accuracy(evaluator, x_te, y_te)
        curve.append((rec["global_step"] // steps_per_epoch, acc))
        if acc >= target:
            job.cancel()

    job = train(MODELS[w["model"]], (x_tr, y_tr), nn.CrossEntropyLoss(), optimizer(w),
                strategy="ddp" if workers else "auto", checkpoint_every=steps_per_epoch,
                **_kwargs(client, workers, w, max_epochs, seed))
    job.subscribe(on_record, {"checkpoint"})
    try:
        job.result(1800)
    except TrainingCancelledError:
        pass
    reached = next((e for e, a in curve if a >= target), None)
    return {"reached": reached, "curve": curve, **_preflight(job)}


def timed(client, w: dict, workers: list[str] | None, epochs: int, seed: int) -> dict:  # noqa: ANN001
    """The training up to the epoch found, timed from ``train()`` to the trained model."""
    from torch import nn

    from parallalx_jupyter.workloads.train import train

    x_tr, y_tr, x_te, y_te = dataset(w["data"])
    t0 = time.perf_counter()
    job = train(MODELS[w["model"]], (x_tr, y_tr), nn.CrossEntropyLoss(), optimizer(w),
                strategy="ddp" if workers else "auto", checkpoint_every=0,
                **_kwargs(client, workers, w, epochs, seed))
    model = job.result(1800)
    seconds = time.perf_counter() - t0
    for _ in range(20):  # the "speed" record follows the last timeline; rarely after result()
        if job.preflight is None or job.preflight.measured_steps_per_s > 0:
            break
        time.sleep(0.05)
    return {"seconds": seconds, "accuracy": accuracy(model, x_te, y_te), "epochs": epochs,
            "timeline": job.timeline, **_preflight(job)}


# --------------------------------------------------------------------------- the peer
def peer_main(args: argparse.Namespace) -> None:
    """One rank of the torchrun-style peer (``--peer-mode ddp``) or one process of the
    physical bound (``--peer-mode bound``): plain PyTorch, no Dask, no parallalx."""
    import torch

    torch.set_num_threads(1)
    w = WORKLOADS[args.workload]
    x_tr, y_tr, x_te, y_te = dataset(w["data"])
    rank = args.peer_rank
    model = MODELS[w["model"]]()
    loss_fn = torch.nn.CrossEntropyLoss()
    if args.peer_mode == "bound":
        _bound(model, loss_fn, optimizer(w)(model.parameters()), x_tr, y_tr, args)
        return
    from datetime import timedelta

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"tcp://{HOST1}:{args.peer_port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=120))
    ddp = DistributedDataParallel(model)
    opt = optimizer(w)(ddp.parameters())
    batch, n = w["batch"], len(x_tr)
    dist.barrier()
    t_loop, wall_loop = time.perf_counter(), time.time()
    eval_s, steps, reached, curve = 0.0, 0, None, []
    for epoch in range(1, args.max_epochs + 1):
        # the same permutation on both ranks; each takes the contiguous half of every batch
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed * 1000 + epoch))
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            half = -(-len(idx) // 2)
            mine = idx[:half] if rank == 0 else idx[half:]
            opt.zero_grad(set_to_none=True)
            loss_fn(ddp(x_tr[mine]), y_tr[mine]).backward()
            opt.step()
            steps += 1
        t_eval = time.perf_counter()
        flag = torch.zeros(1)
        if rank == 0:
            acc = accuracy(model, x_te, y_te)
            curve.append((epoch, acc))
            flag[0] = float(acc >= args.target)
        eval_s += time.perf_counter() - t_eval
        dist.broadcast(flag, 0)
        if flag[0] > 0:
            reached = epoch
            break
    loop_s = time.perf_counter() - t_loop - eval_s
    end = time.time()
    dist.destroy_process_group()
    print(json.dumps({"rank": rank, "reached": reached, "curve": curve, "loop_s": loop_s,
                      "eval_s": eval_s, "steps": steps, "steps_per_s": steps / loop_s,
                      "loop_start": wall_loop, "end": end - eval_s,
                      "accuracy": curve[-1][1] if curve else None}))


def _bound(model, loss_fn, opt, x_tr, y_tr, args: argparse.Namespace) -> None:  # noqa: ANN001
    """Train alone at ``--peer-batch`` for ``--bound-seconds`` once told to start (stdin)."""
    import torch

    g = torch.Generator().manual_seed(args.peer_rank)
    batch, n = args.peer_batch, len(x_tr)

    def step() -> None:
        idx = torch.randint(n, (batch,), generator=g)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x_tr[idx]), y_tr[idx]).backward()
        opt.step()

    for _ in range(3):
        step()
    print("ready", flush=True)
    sys.stdin.readline()  # "go": every process of the phase is warm
    steps, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < args.bound_seconds:
        step()
        steps += 1
    print(json.dumps({"rank": args.peer_rank, "batch": batch, "steps": steps,
                      "steps_per_s": steps / elapsed}), flush=True)


def _peer_cmd(rank: int, *extra: str) -> list[str]:
    # rank r on host r+1, pinned to core r like that host's Dask worker
    return [str(NETNS), "run", str(rank + 1), "taskset", "-c", str(rank), sys.executable,
            str(Path(__file__).resolve()), "--peer-rank", str(rank), *extra]


def _peer_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME=IFNAME)


def _last_json(text: str) -> dict:
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


_peer_runs = 0


def run_peer(name: str, target: float, max_epochs: int, seed: int) -> dict:
    """Both ranks of the DDP peer, launched together; rank 0's numbers."""
    global _peer_runs
    _peer_runs += 1
    port = PEER_PORT + _peer_runs
    extra = ["--workload", name, "--peer-mode", "ddp", "--seed", str(seed), "--target",
             str(target), "--max-epochs", str(max_epochs), "--peer-port", str(port)]
    launch = time.time()
    procs = [subprocess.Popen(_peer_cmd(r, *extra), env=_peer_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"peer rank failed:\n{err[-3000:]}")
    r0 = _last_json(outs[0][0])
    r0["wall_s"] = r0["end"] - launch  # launch -> target, start-up included, evaluation not
    r0["startup_s"] = r0["loop_start"] - launch
    return r0


def run_bound(name: str, seconds: float) -> dict:
    """Steps/s of one pinned process at the full batch alone, then two at half the batch."""
    w = WORKLOADS[name]

    def phase(ranks: list[int], batch: int) -> list[dict]:
        extra = ["--workload", name, "--peer-mode", "bound", "--peer-batch", str(batch),
                 "--bound-seconds", str(seconds)]
        procs = [subprocess.Popen(_peer_cmd(r, *extra), env=_peer_env(), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in ranks]
        for p in procs:
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"bound process failed: {line}{p.stderr.read()[-3000:]}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        return [_last_json(p.communicate(timeout=600)[0]) for p in procs]

    full = phase([0], w["batch"])[0]
    half = phase([0, 1], w["batch"] // 2)
    slowest = min(h["steps_per_s"] for h in half)
    return {"full_sps": full["steps_per_s"], "half_sps": [h["steps_per_s"] for h in half],
            "ratio": full["steps_per_s"] / slowest}


# --------------------------------------------------------------------------- driver (host 1)
def inner(args: argparse.Namespace) -> None:
    from distributed import Client

    client = Client(f"tcp://{HOST1}:{PORT}", timeout="60s")
    client.wait_for_workers(2, timeout=120)
    workers = sorted(client.scheduler_info()["workers"])
    local = [x for x in workers if HOST1 in x]
    results: dict[str, dict] = {}
    for name in _names(args.workloads):
        w = WORKLOADS[name]
        target = _targets(args.targets).get(name, w["target"])
        max_epochs = args.max_epochs or w["max_epochs"]
        per_seed = []
        for seed in _seeds(args.seeds):
            _log(f"{name} seed {seed}: searching the epoch at which {target} is reached")
            one = search(client, w, local, target, max_epochs, seed)
            two = search(client, w, None, target, max_epochs, seed)
            _log(f"{name} seed {seed}: one device {one['reached']} epoch(s), two-auto "
                 f"{two['reached']} ({two['placement']})")
            triples = []
            for _ in range(args.repeats):
                triple: dict = {}
                if one["reached"] is not None:
                    triple["one"] = timed(client, w, local, one["reached"], seed)
                if two["reached"] is not None:
                    triple["two"] = timed(client, w, None, two["reached"], seed)
                try:
                    triple["peer"] = run_peer(name, target, max_epochs, seed)
                except Exception as exc:  # keep the parallalx runs of the whole benchmark
                    _log(f"{name} seed {seed}: the peer failed: {exc}")
                    triple["peer"] = {"error": str(exc)[-2000:], "reached": None}
                _log(f"{name} seed {seed}: " + ", ".join(
                    f"{k} {v.get('seconds', v.get('loop_s', float('nan'))):.1f}s"
                    for k, v in triple.items()))
                triples.append(triple)
            for r in (one, two):
                r.pop("report", None)
            per_seed.append({"seed": seed, "one": one, "two": two, "triples": triples})
        _log(f"{name}: physical bound (no communication)")
        try:
            bound = run_bound(name, args.bound_seconds)
        except Exception as exc:
            _log(f"{name}: the bound failed: {exc}")
            bound = {"error": str(exc)[-2000:]}
        results[name] = {"target": target, "seeds": per_seed, "bound": bound}
    print(json.dumps(results))
    client.close()


# --------------------------------------------------------------------------- outside
def host(i: int, *cmd: str, log: Path) -> subprocess.Popen[bytes]:
    sys.path.insert(0, str(REPO))
    from parallalx_jupyter.cluster.quiet import quiet_dask_env

    # scheduler and workers configured like parallalx's own (cluster/quiet.py)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **quiet_dask_env())
    return subprocess.Popen([str(NETNS), "run", str(i), *cmd], env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="mlp17m,cnn,demo", help="of " + ", ".join(WORKLOADS))
    ap.add_argument("--rate", default="1gbit", help="tc tbf rate of every link")
    ap.add_argument("--seeds", default="0,1,2",
                    help="shuffle seeds (train(seed=...)): the epoch at which a target is "
                    "reached moves by one or two with the data order alone")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed one / two-auto / peer triples per seed; the median of all "
                    "paired ratios is reported")
    ap.add_argument("--max-epochs", type=int, default=0,
                    help="epochs at most (default: each workload's, 15)")
    ap.add_argument("--targets", default="",
                    help="target accuracies, e.g. 0.9 (all) or mlp17m=0.9,cnn=0.9 "
                    "(default: 0.95 for each workload)")
    ap.add_argument("--bound-seconds", type=float, default=5.0,
                    help="seconds of each phase of the physical-bound measurement")
    ap.add_argument("--netns-prefix", default="pxb", help="NETNS_PREFIX of these netns hosts")
    ap.add_argument("--logs", default="/tmp/parallalx-slow-link")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peer-rank", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--peer-mode", default="ddp", help=argparse.SUPPRESS)
    ap.add_argument("--peer-port", type=int, default=PEER_PORT, help=argparse.SUPPRESS)
    ap.add_argument("--peer-batch", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--workload", default="", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--target", type=float, default=0.95, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ["NETNS_PREFIX"] = args.netns_prefix
    if args.peer_rank is not None:
        peer_main(args)
        return
    if args.inner:
        inner(args)
        return
    for name in _names(args.workloads):
        if name not in WORKLOADS:
            sys.exit(f"unknown workload {name!r} (of {', '.join(WORKLOADS)})")
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([str(NETNS), "up", "2", args.rate], check=True)
    py = sys.executable
    procs = []
    try:
        procs.append(host(1, py, "-m", "distributed.cli.dask_scheduler", "--host", HOST1,
                          "--port", str(PORT), "--no-dashboard", log=logs / "scheduler.log"))
        time.sleep(3)
        for i in (1, 2):  # host i's worker pinned to core i-1
            procs.append(host(i, "taskset", "-c", str(i - 1), py, "-m",
                              "distributed.cli.dask_worker", f"tcp://{HOST1}:{PORT}",
                              "--host", f"10.77.0.{i}", "--nthreads", "1", "--no-nanny",
                              "--no-dashboard", "--memory-limit", "0", "--name", f"device{i}",
                              log=logs / f"worker{i}.log"))
        out = subprocess.run(
            [str(NETNS), "run", "1", py, str(Path(__file__).resolve()), *sys.argv[1:],
             "--inner"],
            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.exit(f"inner run failed (exit {out.returncode}); its stderr is above")
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
        subprocess.run([str(NETNS), "down"], check=False, capture_output=True)
    (logs / "results.json").write_text(json.dumps(result, indent=1))
    report(result, args)
    print(f"\n(whole run {time.perf_counter() - t0:.0f} s; raw results in {logs / 'results.json'})")


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _seeds(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _targets(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in _names(text):
        if "=" in item:
            k, v = item.split("=", 1)
            out[k.strip()] = float(v)
        else:
            out.update(dict.fromkeys(WORKLOADS, float(item)))
    return out


# --------------------------------------------------------------------------- report
def _med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def _speed_ratio(run: dict) -> float | None:
    return run["measured"] / run["predicted"] if run.get("predicted") and run.get(
        "measured") else None


def report(result: dict[str, dict], args: argparse.Namespace) -> None:
    rows, speed_rows, verdicts = [], [], []
    for name, res in result.items():
        w, target = WORKLOADS[name], res["target"]
        print(f"\n=== {name} (target {target}, batch {w['batch']}, {w['opt']} lr {w['lr']})")
        runs: dict[str, list[dict]] = {"one": [], "two": [], "peer": []}
        r_one, r_peer, r_peer_wall, placements, searched, short = [], [], [], [], [], []
        for s in res["seeds"]:
            print(f"--- shuffle seed {s['seed']}")
            searched.append(s["two"]["placement"])
            for label in ("one", "two"):
                r = s[label]
                print(f"{label}: accuracy by epoch {[(e, round(a, 4)) for e, a in r['curve']]}; "
                      f"{target} after {r['reached']} epoch(s); search placement {r['placement']}"
                      + (f" (idle: {', '.join(r['idle'])})" if r.get("idle") else ""))
            for t in s["triples"]:
                for label in ("one", "two"):
                    if label not in t:
                        continue
                    x = t[label]
                    runs[label].append(x)
                    if x["accuracy"] < target:
                        short.append(x["accuracy"])
                    if label == "two":
                        placements.append(x["placement"])
                    print(f"{label}: {x['seconds']:.1f}s, {x['epochs']} epoch(s), accuracy "
                          f"{x['accuracy']:.3f}, {x['placement']}, steps/s predicted "
                          f"{_f(x['predicted'])} measured {_f(x['measured'])} (x"
                          f"{_f(_speed_ratio(x))})")
                if "one" in t and "two" in t:
                    r_one.append(t["two"]["seconds"] / t["one"]["seconds"])
                p = t["peer"]
                if "error" in p:
                    print(f"peer: failed: {p['error'][-500:]}")
                    continue
                runs["peer"].append(p)
                print(f"peer: {p['loop_s']:.1f}s from the loop's start ({p['wall_s']:.1f}s from "
                      f"launch, start-up {p['startup_s']:.1f}s), {p['reached']} epoch(s), "
                      f"{p['steps_per_s']:.2f} steps/s, curve {p['curve']}")
                if "two" in t and p["reached"] is not None:
                    r_peer.append(t["two"]["seconds"] / p["loop_s"])
                    r_peer_wall.append(t["two"]["seconds"] / p["wall_s"])
        if runs["two"]:
            note = runs["two"][-1].get("note")
            print(f"two-auto placement: {note or runs['two'][-1]['placement']}")
        if short:
            print(f"warning: {len(short)} timed run(s) ended below {target} "
                  f"({', '.join(f'{a:.3f}' for a in short)}): the ratio is optimistic")
        b = res["bound"]
        if "error" in b:
            print(f"physical bound: failed: {b['error'][-500:]}")
            bound = "failed"
        else:
            print(f"physical bound: one process alone at batch {w['batch']} "
                  f"{b['full_sps']:.2f} steps/s; two at {w['batch'] // 2} concurrently "
                  f"{', '.join(f'{x:.2f}' for x in b['half_sps'])} steps/s -> best two/one "
                  f"{b['ratio']:.2f}x per epoch")
            bound = f"{b['full_sps']:.2f} / {min(b['half_sps']):.2f} = {b['ratio']:.2f}x"
        peers = [p for p in runs["peer"] if p["reached"] is not None]
        m1, m2 = _med(r_one), _med(r_peer)
        rows.append([
            name, str(target),
            _f(_med([x["seconds"] for x in runs["one"]]), ".1f"),
            _f(_med([x["seconds"] for x in runs["two"]]), ".1f"),
            f"{_f(_med([p['loop_s'] for p in peers]), '.1f')} "
            f"({_f(_med([p['wall_s'] for p in peers]), '.1f')})",
            f"{_f(m1)} (<= {w['goal_one']})",
            f"{_f(m2)} ({_f(_med(r_peer_wall))})"
            + (f" (<= {w['goal_peer']})" if w["goal_peer"] is not None else ""),
            "timed: " + ("; ".join(sorted(set(placements))) or "-")
            + ("" if set(searched) <= set(placements)
               else " (search: " + "; ".join(sorted(set(searched))) + ")"),
            bound,
        ])
        ratios = {k: [r for r in map(_speed_ratio, runs[k]) if r is not None]
                  for k in ("one", "two")}
        speed_rows.append([name] + [
            f"{_f(_med([x['predicted'] for x in runs[k]]))} / "
            f"{_f(_med([x['measured'] for x in runs[k]]))} "
            f"(x{_f(_med(ratios[k]))}, {_f(min(ratios[k], default=None))}-"
            f"{_f(max(ratios[k], default=None))})"
            for k in ("one", "two")
        ] + [_f(_med([p["steps_per_s"] for p in runs["peer"]]))])
        ok_speed = all(abs(r - 1) <= SPEED_TOLERANCE for k in ratios for r in ratios[k])
        verdicts.append(
            f"{name}: two/one {_f(m1)} (goal <= {w['goal_one']}: "
            f"{'met' if m1 is not None and m1 <= w['goal_one'] else 'NOT met'})"
            + (f", two/peer {_f(m2)} (goal <= {w['goal_peer']}: "
               f"{'met' if m2 is not None and m2 <= w['goal_peer'] else 'NOT met'})"
               if w["goal_peer"] is not None else "")
            + f", predicted vs measured within +-{SPEED_TOLERANCE:.0%}: "
            f"{'met' if ok_speed and any(ratios.values()) else 'NOT met'}"
        )
    n_seeds = len(_seeds(args.seeds))
    print(f"\n## Summary: {args.rate} link, {n_seeds} seed(s) x {args.repeats} repeat(s), "
          "medians (ratios: median of paired ratios)\n")
    _table(["workload", "target", "one (s)", "two-auto (s)", "peer loop (wall) (s)",
            "two/one (goal)", "two/peer loop (wall) (goal)", "two-auto placement",
            "bound: sps 1@B / 2@B/2 = best two/one"], rows)
    print()
    _table(["workload", "one: predicted / measured steps/s (ratio, range)",
            "two-auto: predicted / measured steps/s (ratio, range)", "peer steps/s"],
           speed_rows)
    print()
    for v in verdicts:
        print(v)


def _table(head: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
