"""Two devices over a rate-limited link vs one device alone: time to a target test accuracy.

Real separate hosts: ``../shared/tools/netns-hosts up 2 RATE`` makes two network namespaces
(10.77.0.1, 10.77.0.2) joined through a bridge with a ``tc tbf`` limit on every link. The Dask
scheduler, one worker and this driver run in host 1, the second worker in host 2, so every
byte between the two ranks crosses the limited link. The model is a 17.1M-parameter MLP on
scikit-learn's digits (64-4096-4096-10), where plain DDP moves ~68 MB per step: over 1 Gbit/s
that is ~0.55 s of communication against ~0.15 s of compute, so DDP is slower than one device
and the preflight has to pick something else (``auto``).

Both sides make the same ``train()`` call (global batch 128, SGD lr 0.04 momentum 0.9: of the
batch/learning-rate pairs tried for one device, 64/0.02, 128/0.04 and 256/0.08, the fastest to
the target); only the workers differ, so two devices train 64 + 64 samples per step.

For each shuffle seed (``--seeds``; the data order alone moves the epoch at which 0.95 is
reached by one or two, for one device as for two) and each configuration a first run finds
the first epoch at which the test accuracy reaches the target (a checkpoint per epoch,
evaluated here; the run is cancelled once it is reached). Then exactly that training, without
intermediate checkpoints, is timed from the ``train()`` call to the trained model, one device
and two devices alternating ``--repeats`` times; the median of all paired ratios two-devices /
one-device is printed (on a shared 2-core VM a single one-device run varies by +-15 %).

    python benchmarks/bench_slow_link.py [--rate 1gbit] [--target 0.95] [--seeds 0,1,2]  # as root

Needs root and iproute2; on machines with more cores the same script measures the same thing.
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


# --------------------------------------------------------------------------- inside host 1
def make_model():  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 10))


def digits():  # noqa: ANN201
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    f = functools.partial(torch.as_tensor, dtype=torch.float32)
    return f(x_tr) / 16.0, torch.as_tensor(y_tr), f(x_te) / 16.0, torch.as_tensor(y_te)


def accuracy(model, x, y) -> float:  # noqa: ANN001
    import torch

    # an exact fraction: a float32 mean makes 342/360 0.94999999, which "misses" a 0.95 target
    with torch.no_grad():
        return int((model(x).argmax(1) == y).sum()) / len(y)


def _common(client, workers: list[str], batch: int, epochs: int, seed: int) -> dict:  # noqa: ANN001
    """The same call for one device and for two: only the workers differ."""
    return dict(
        epochs=epochs, batch_size=batch, client=client, workers=workers, torch_threads=1,
        group_timeout=120.0, report=False, seed=seed,
    )


def _optimizer(lr: float):  # noqa: ANN202
    import torch

    return functools.partial(torch.optim.SGD, lr=lr, momentum=0.9)


def search_config(  # noqa: ANN201
    client, workers: list[str], target: float, max_epochs: int, strategy: str,  # noqa: ANN001
    batch: int, lr: float, seed: int,
):
    """First epoch at which the test accuracy reaches ``target``, and the strategy used."""
    from torch import nn

    from parallalx_jupyter.training import TrainingCancelledError
    from parallalx_jupyter.training.checkpoint import unpack
    from parallalx_jupyter.workloads.train import train

    x_tr, y_tr, x_te, y_te = digits()
    common = _common(client, workers, batch, max_epochs, seed)
    steps_per_epoch = -(-len(x_tr) // batch)
    opt = _optimizer(lr)
    # run 1: accuracy after each epoch, until the target is reached
    curve: list[tuple[int, float]] = []
    evaluator = make_model()
    job = None

    def on_record(rec: dict) -> None:
        if rec.get("kind") != "checkpoint" or rec["global_step"] % steps_per_epoch:
            return
        evaluator.load_state_dict(unpack(job._store.latest())["model"])
        acc = accuracy(evaluator, x_te, y_te)
        curve.append((rec["global_step"] // steps_per_epoch, acc))
        if acc >= target:
            job.cancel()

    job = train(make_model, (x_tr, y_tr), nn.CrossEntropyLoss(), opt, strategy=strategy,
                checkpoint_every=steps_per_epoch, **common)
    job.subscribe(on_record, {"checkpoint"})
    try:
        job.result(1800)
    except TrainingCancelledError:
        pass
    reached = next((e for e, a in curve if a >= target), None)
    report = job.preflight
    fixed = {"strategy": report.strategy}
    if report.strategy == "local_sgd":
        fixed["local_sgd_every"] = report.local_sgd_every
    return {"workers": len(workers), "reached": reached, "curve": curve, "report": str(report),
            "fixed": fixed, "batch": common["batch_size"]}


def timed_run(  # noqa: ANN201
    client, workers: list[str], found: dict, batch: int, lr: float, seed: int  # noqa: ANN001
):
    """The searched training up to the epoch found, timed from train() to the model."""
    from torch import nn

    from parallalx_jupyter.workloads.train import train

    x_tr, y_tr, x_te, y_te = digits()
    common = _common(client, workers, batch, found["reached"], seed)
    t0 = time.perf_counter()
    job = train(make_model, (x_tr, y_tr), nn.CrossEntropyLoss(), _optimizer(lr),
                checkpoint_every=0, **found["fixed"], **common)
    model = job.result(1800)
    seconds = time.perf_counter() - t0
    steps = job.progress.get("global_step") or 0
    trained_s = job.timeline.get("last_step", 0.0) - job.timeline.get("first_step", 0.0)
    return {"seconds": seconds, "accuracy": accuracy(model, x_te, y_te),
            "steps_per_s": steps / trained_s if trained_s > 0 else None,
            "timeline": job.timeline}


def inner(args: argparse.Namespace) -> None:
    from distributed import Client

    client = Client(f"tcp://10.77.0.1:{PORT}", timeout="60s")
    client.wait_for_workers(2, timeout=120)
    workers = sorted(client.scheduler_info()["workers"])
    local = [w for w in workers if "10.77.0.1" in w]
    b, lr = args.batch, args.lr
    results = []
    for seed in _seeds(args.seeds):
        one = search_config(client, local, args.target, args.max_epochs, "ddp", b, lr, seed)
        two = search_config(client, workers, args.target, args.max_epochs, "auto", b, lr, seed)
        one["runs"], two["runs"] = [], []
        if one["reached"] is not None and two["reached"] is not None:
            for _ in range(args.repeats):
                one["runs"].append(timed_run(client, local, one, b, lr, seed))
                two["runs"].append(timed_run(client, workers, two, b, lr, seed))
        results.append({"seed": seed, "one": one, "two": two})
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
    ap.add_argument("--rate", default="1gbit")
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--max-epochs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=128,
                    help="global batch of the train() call, the same for one and two devices "
                    "(two devices train 64 + 64 of it per step)")
    ap.add_argument("--lr", type=float, default=0.04, help="SGD learning rate (momentum 0.9)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="timed one-device / two-device pairs per seed; the median ratio of "
                    "all pairs is reported")
    ap.add_argument("--seeds", default="0,1,2",
                    help="shuffle seeds (train(seed=...)): the epoch at which 0.95 is reached "
                    "moves by one or two with the data order alone (one test sample is 0.3 %%)")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--logs", default="/tmp/parallalx-slow-link")
    args = ap.parse_args()
    if args.inner:
        inner(args)
        return
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(NETNS), "up", "2", args.rate], check=True)
    py = sys.executable
    procs = []
    try:
        procs.append(host(1, py, "-m", "distributed.cli.dask_scheduler", "--host", "10.77.0.1",
                          "--port", str(PORT), "--no-dashboard", log=logs / "scheduler.log"))
        time.sleep(3)
        for i in (1, 2):
            procs.append(host(i, py, "-m", "distributed.cli.dask_worker",
                              f"tcp://10.77.0.1:{PORT}", "--host", f"10.77.0.{i}",
                              "--nthreads", "1", "--no-nanny", "--no-dashboard",
                              "--memory-limit", "0", "--name", f"device{i}",
                              log=logs / f"worker{i}.log"))
        out = subprocess.run(
            [str(NETNS), "run", "1", py, __file__, "--inner", "--target", str(args.target),
             "--max-epochs", str(args.max_epochs), "--repeats", str(args.repeats),
             "--seeds", args.seeds,
             "--batch", str(args.batch), "--lr", str(args.lr)],
            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
            check=False,
        )
        if out.returncode != 0:
            sys.exit(f"inner run failed:\n{out.stderr[-4000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        for p in procs:
            p.kill()
        subprocess.run([str(NETNS), "down"], check=False, capture_output=True)
    report(result, args)


def _seeds(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def report(result: list[dict], args: argparse.Namespace) -> None:
    ratios: list[float] = []
    short: list[float] = []
    for per_seed in result:
        print(f"--- shuffle seed {per_seed['seed']}")
        one, two = per_seed["one"], per_seed["two"]
        for label, r in (("one device", one), ("two devices", two)):
            print(f"{label}: accuracy by epoch {[(e, round(a, 4)) for e, a in r['curve']]}")
            if r["reached"] is None:
                print(f"{label}: target {args.target} not reached")
                continue
            print(f"{label}: {args.target} after {r['reached']} epoch(s) ({r['fixed']}, global "
                  f"batch {r['batch']}); timed runs: " + ", ".join(
                      f"{x['seconds']:.1f}s ({x['steps_per_s']:.2f} steps/s, accuracy "
                      f"{x['accuracy']:.3f})" for x in r["runs"]))
            if r["runs"]:
                print(f"{label}: phases of the last run (s after train()): " + ", ".join(
                    f"{k} {v:.2f}" for k, v in r["runs"][-1]["timeline"].items()))
        pairs = list(zip(one["runs"], two["runs"], strict=True))
        ratios += [b["seconds"] / a["seconds"] for a, b in pairs]
        short += [x["accuracy"] for x in one["runs"] + two["runs"] if x["accuracy"] < args.target]
        if pairs:
            print("two / one: " + ", ".join(f"{b['seconds'] / a['seconds']:.2f}" for a, b in pairs))
    print(result[-1]["two"]["report"])
    if short:
        # the search run's checkpoint per epoch also averages local SGD's ranks, so a timed run
        # (no checkpoints) can end on a slightly different model
        print(f"warning: {len(short)} timed run(s) ended below {args.target} "
              f"({', '.join(f'{a:.3f}' for a in short)}): the ratio is optimistic")
    if ratios:
        print(f"time to {args.target} accuracy, two devices over {args.rate} / one device: "
              f"median {statistics.median(ratios):.2f}x over {len(ratios)} pair(s) and "
              f"{len(result)} shuffle seed(s) ({', '.join(f'{x:.2f}' for x in ratios)}) "
              "(goal <= 0.70)")


if __name__ == "__main__":
    main()
