"""Two devices over a rate-limited link vs one device alone: time to a target test accuracy.

Real separate hosts: ``../shared/tools/netns-hosts up 2 RATE`` makes two network namespaces
(10.77.0.1, 10.77.0.2) joined through a bridge with a ``tc tbf`` limit on every link. The Dask
scheduler, one worker and this driver run in host 1, the second worker in host 2, so every
byte between the two ranks crosses the limited link. The model is a 17.1M-parameter MLP on
scikit-learn's digits (64-4096-4096-10), where plain DDP moves ~68 MB per step: over 1 Gbit/s
that is ~0.55 s of communication against ~0.15 s of compute, so DDP is slower than one device
and the preflight has to pick something else (``auto``).

For each configuration: run 1 finds the first epoch at which the test accuracy reaches the
target (a checkpoint per epoch, evaluated here; the run is cancelled once it is reached); run 2
repeats exactly that training without intermediate checkpoints and is timed from the
``train()`` call to the trained model. The ratio two-devices / one-device is printed.

    sudo python benchmarks/bench_slow_link.py [--rate 1gbit] [--target 0.95]

Needs root and iproute2; on machines with more cores the same script measures the same thing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
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

    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def run_config(  # noqa: ANN201
    client, workers: list[str], target: float, max_epochs: int, strategy: str,  # noqa: ANN001
    per_device_batch: int,
):
    import torch
    from torch import nn

    from parallalx_jupyter.training import TrainingCancelledError, train
    from parallalx_jupyter.training.checkpoint import unpack

    x_tr, y_tr, x_te, y_te = digits()
    batch = per_device_batch * len(workers)
    steps_per_epoch = -(-len(x_tr) // batch)
    common = dict(
        epochs=max_epochs, batch_size=batch, client=client, workers=workers, torch_threads=1,
        group_timeout=120.0, report=False,
    )
    opt = functools.partial(torch.optim.SGD, lr=0.02, momentum=0.9)
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
    if reached is None:
        return {"workers": len(workers), "reached": None, "curve": curve, "report": str(report)}
    chosen = report.strategy
    # run 2: the same training up to that epoch, timed, no intermediate checkpoints
    fixed = dict(strategy=chosen)
    if chosen == "local_sgd":
        fixed["local_sgd_every"] = report.local_sgd_every
    common["epochs"] = reached
    t0 = time.perf_counter()
    job2 = train(make_model, (x_tr, y_tr), nn.CrossEntropyLoss(), opt, checkpoint_every=0,
                 **fixed, **common)
    model = job2.result(1800)
    seconds = time.perf_counter() - t0
    return {
        "workers": len(workers), "reached": reached, "seconds": seconds, "curve": curve,
        "accuracy": accuracy(model, x_te, y_te), "strategy": chosen, "batch": batch,
        "steps_per_s": job2.progress.get("steps_per_s"), "report": str(report),
        "timeline": job2.timeline,
    }


def inner(args: argparse.Namespace) -> None:
    from distributed import Client

    client = Client(f"tcp://10.77.0.1:{PORT}", timeout="60s")
    client.wait_for_workers(2, timeout=120)
    workers = sorted(client.scheduler_info()["workers"])
    local = [w for w in workers if "10.77.0.1" in w]
    b = args.per_device_batch
    one = run_config(client, local, args.target, args.max_epochs, "ddp", b)
    two = run_config(client, workers, args.target, args.max_epochs, "auto", b)
    print(json.dumps({"one": one, "two": two}))
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
    ap.add_argument("--per-device-batch", type=int, default=64,
                    help="each device's batch; the global batch grows with the devices, as "
                    "when adding a machine to a data-parallel job (weak scaling)")
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
             "--max-epochs", str(args.max_epochs),
             "--per-device-batch", str(args.per_device_batch)],
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
    one, two = result["one"], result["two"]
    for label, r in (("one device", one), ("two devices", two)):
        print(f"{label}: accuracy by epoch {[(e, round(a, 3)) for e, a in r['curve']]}")
        if r["reached"] is None:
            print(f"{label}: target {args.target} not reached")
            continue
        print(f"{label}: {args.target} after {r['reached']} epoch(s), {r['seconds']:.1f}s "
              f"({r['strategy']}, global batch {r['batch']}, {r['steps_per_s']:.2f} steps/s, "
              "final accuracy "
              f"{r['accuracy']:.3f})")
        print(f"{label}: phases (s after train()): " + ", ".join(
            f"{k} {v:.2f}" for k, v in r["timeline"].items()))
    print(two["report"])
    if one.get("seconds") and two.get("seconds"):
        print(f"time to {args.target} accuracy, two devices over {args.rate} / one device: "
              f"{two['seconds'] / one['seconds']:.2f}x (goal <= 0.70)")


if __name__ == "__main__":
    main()
