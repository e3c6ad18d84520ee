"""The notebook side of the cable-pull test, run inside network namespace host 1.

Connects to the TLS scheduler, trains with checkpoints, prints one JSON line once training is
under way (the test then pulls host 2's cable) and one with the outcome: the job's records,
and when each worker left the scheduler's view. The model and data are the fault tests' (that
module ships its functions to the workers by value, as a notebook's).
"""

from __future__ import annotations

import functools
import json
import sys
import threading
import time

import torch
from distributed import Client
from distributed.security import Security
from test_training_faults import data, model_factory  # this script's directory is on the path
from torch import nn

from parallalx_jupyter.workloads.train import train


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def main() -> None:
    address, ca, cert, key, checkpoints, group_timeout, strategy = sys.argv[1:8]
    security = Security(tls_ca_file=ca, tls_client_cert=cert, tls_client_key=key,
                        require_encryption=True)
    client = Client(address, security=security, timeout="60s")
    client.wait_for_workers(2, timeout=120)
    workers = sorted(client.sync(client.scheduler.identity, n_workers=-1)["workers"])
    left: dict[str, float] = {}  # worker -> when it was first missing from the scheduler
    done = threading.Event()

    def watch_cluster() -> None:
        while not done.is_set():
            listed = client.sync(client.scheduler.identity, n_workers=-1)["workers"]
            for w in workers:
                if w not in listed:
                    left.setdefault(w, time.time())
            time.sleep(0.2)

    # both devices named: `auto` decides the strategy but may not leave one idle
    job = train(
        model_factory, data(), nn.CrossEntropyLoss(), functools.partial(torch.optim.SGD, lr=0.1),
        batch_size=32, epochs=1, client=client, torch_threads=1, metrics_interval=0.05,
        strategy=strategy, workers=workers, checkpoint_every=25, checkpoint_dir=checkpoints,
        group_timeout=float(group_timeout), settle_timeout=3.0, min_workers=1,
    )
    deadline = time.monotonic() + 120
    while job.progress.get("global_step", 0) < 120:
        if job.done() or time.monotonic() > deadline:
            emit({"error": f"no progress: {job.progress} {job.exception()!r}"})
            return
        time.sleep(0.02)
    emit({"ready": True, "workers": [d.worker for d in job.preflight.devices]})
    watcher = threading.Thread(target=watch_cluster, daemon=True)
    watcher.start()
    try:
        trained = job.result(timeout=240)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        emit({"error": repr(exc)})
        return
    deadline = time.monotonic() + 20  # training alone may end before the cut device leaves
    while not left and time.monotonic() < deadline:
        time.sleep(0.2)
    done.set()
    watcher.join(5)
    x, y = data(2000)
    emit({
        "restarts": [e for e in job.events if e["kind"] == "restart"],
        "states": [e for e in job.events if e["kind"] == "state"],
        "preflights": [e for e in job.events if e["kind"] == "preflight"],
        "left": left,
        "global_step": job.progress["global_step"],
        "world_size": job.preflight.world_size,
        "accuracy": float((trained(x).argmax(1) == y).float().mean()),
    })
    client.close()


if __name__ == "__main__":
    main()
