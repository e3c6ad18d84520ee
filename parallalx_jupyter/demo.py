"""`parallalx demo`: several real devices on this machine, paired through the real protocol.

Each device is its own Jupyter server process with its own state directory and ports on
127.0.0.1. The first device invites the others; each invited device's "user" is played by this
script calling that device's own REST API to accept, after checking that both screens show the
same verification code, which is exactly what a person would do. Nothing is simulated except
that the devices share a host.

Then the point of it all: the accepted devices' workers join the main device's hardened
scheduler, and the demo connects *as the main device* (``cluster.connect.main_client``) and
trains an MLP on scikit-learn's digits across them with ``parallalx_jupyter.train``,
printing the preflight report, each device's share of the samples, test accuracy and time.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .local_device import LocalDevice, wait_for

NAMES = ["laptop", "lab-desktop", "gaming-pc", "workstation", "tower", "mini-pc", "nuc", "server"]


#: where the demo's lines go (`run_demo(echo=...)`); None: print them unless `as_json`
_echo: Callable[[str], None] | None = None


def _say(as_json: bool, text: str) -> None:
    if _echo is not None:
        _echo(text)
    elif not as_json:
        print(text, flush=True)


def check_device_count(devices: int) -> int:
    """The demo needs a main device and at least one other, and has names for eight."""
    if not 2 <= devices <= len(NAMES):
        raise ValueError(f"the demo needs 2 to {len(NAMES)} devices, got {devices}")
    return devices


def check_workdir(workdir: str) -> str:
    """The demo makes a state dir per device under `workdir`: a file there (or on the way
    there) would stop it only once the first device starts, in a NotADirectoryError."""
    if not workdir.strip():
        raise ValueError("must not be empty")
    path = Path(workdir).expanduser()
    on_the_way = next((p for p in (path, *path.parents) if p.exists()), None)
    if on_the_way is not None and not on_the_way.is_dir():
        raise ValueError(f"{on_the_way} is a file, not a directory: give a directory (it may "
                         "not exist yet) or leave --workdir out")
    return workdir


def run_demo(devices: int = 3, workdir: str | None = None, as_json: bool = False,
             echo: Callable[[str], None] | None = None) -> Any:
    """Run the demo; the report (a dict) with `as_json`, else None. Its lines, training
    progress included, are printed, or handed to `echo` where one is given (a test reads
    them without a terminal)."""
    global _echo
    check_device_count(devices)
    if workdir:
        check_workdir(workdir)
    _echo = echo
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="parallalx-demo-"))
    started: list[LocalDevice] = []
    report: dict[str, Any] = {"devices": [], "pairings": []}
    t0 = time.perf_counter()
    try:
        for i in range(devices):
            dev = LocalDevice(home=root / NAMES[i], name=NAMES[i])
            _say(as_json, f"starting device {NAMES[i]} ...")
            started.append(dev.start())
        main, others = started[0], started[1:]
        for dev in started:
            info = dev.api("GET", "device")
            report["devices"].append({"name": info["name"], "id": info["id_display"],
                                      "peer_url": dev.peer_url})
            _say(as_json, f"  {info['name']:<12} {info['id_display']}  peer {dev.peer_url}")
        for dev in others:
            sent = main.api("POST", "invitations", {
                "url": dev.peer_url, "asks": {"purpose": "demo: train a digits classifier"},
            })
            incoming = wait_for(lambda d=dev, rid=sent["id"]: next(
                (r for r in d.api("GET", "requests") if r["id"] == rid), None))
            same = incoming["code"] == sent["code"]
            _say(as_json, f"{main.name} -> {dev.name}: code {sent['code']} on {main.name}, "
                          f"{incoming['code']} on {dev.name} ({'match' if same else 'MISMATCH'})")
            if not same:
                dev.api("POST", f"requests/{incoming['id']}/reject", {})
                raise RuntimeError("verification codes differ: refusing to pair")
            dev.api("POST", f"requests/{incoming['id']}/accept", {})
            wait_for(lambda rid=sent["id"]:
                     main.api("GET", f"requests/{rid}")["state"] == "accepted")
            report["pairings"].append({"main": main.name, "worker": dev.name, "code": sent["code"]})
        for dev in started:
            view = dev.api("GET", "devices")
            entry = next(d for d in report["devices"] if d["name"] == dev.name)
            entry["sees"] = [{"name": v["name"], "role": v["role"], "state": v["state"]}
                             for v in view]
            _say(as_json, f"{dev.name} sees: " + ", ".join(
                f"{v['name']} ({v['role']}, {v['state']})" for v in view))
        report["pairing_seconds"] = round(time.perf_counter() - t0, 2)
        _say(as_json, f"paired {len(others)} devices with {main.name} in "
                      f"{report['pairing_seconds']} s")
        report["training"] = _train_digits(main, others, as_json)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        _say(as_json, f"total time {report['seconds']} s (pairing + training)")
    finally:
        _echo = None
        for dev in started:
            dev.stop()
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)
    return report if as_json else None


def _watch(job: Any, as_json: bool, timeout: float, every: float = 2.0) -> Any:
    """Say how training goes while it trains (state, step/total, loss, samples/s, ETA: the
    line `parallalx run` prints), at most every `every` s and only when it changed, so
    the demo is never silent for the minute it trains; then the job's result."""
    from .jobs.reporter import summarize
    from .text import progress_text

    deadline = time.monotonic() + timeout
    last, said_at = "", 0.0
    while not job.done() and time.monotonic() < deadline:
        time.sleep(0.25)
        line = progress_text(summarize(job.progress)) if job.progress else ""
        line = f"  training ({job.state}): {line}" if line else f"  training ({job.state}) ..."
        if line != last and time.monotonic() - said_at >= every:
            _say(as_json, line)
            last, said_at = line, time.monotonic()
    return job.result(timeout=max(1.0, deadline - time.monotonic()))


def _wait_for_workers(main: LocalDevice, others: list[LocalDevice], timeout: float) -> dict:
    """Until `GET cluster` on the main device lists a worker of every accepted device."""
    ids = {dev.api("GET", "device")["id"]: dev.name for dev in others}

    def ready() -> dict | None:
        state = main.api("GET", "cluster")
        joined = {w["device_id"] for w in state.get("workers") or []}
        return state if set(ids) <= joined else None

    return wait_for(ready, timeout=timeout, interval=0.2)


def _digits() -> tuple[Any, ...]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)

    def f(a: Any) -> Any:
        return torch.as_tensor(a, dtype=torch.float32) / 16.0

    return f(x_tr), torch.as_tensor(y_tr), f(x_te), torch.as_tensor(y_te)


def _train_digits(main: LocalDevice, others: list[LocalDevice], as_json: bool) -> dict[str, Any]:
    """Train on the paired devices' workers as the main device; the report's training part."""
    import functools

    import torch
    from torch import nn

    from .client import ApiClient
    from .cluster.connect import main_client
    from .workloads.train import train

    t0 = time.perf_counter()
    _say(as_json, "waiting for every accepted device's worker to join the cluster ...")
    state = _wait_for_workers(main, others, timeout=90)
    names = {d["id"]: d["name"] for d in main.api("GET", "devices")}
    names.update({dev.api("GET", "device")["id"]: dev.name for dev in (main, *others)})
    device_of = {w["address"]: names.get(w["device_id"], w["device_id"])
                 for w in state["workers"]}
    _say(as_json, "cluster: workers of " + ", ".join(sorted(set(device_of.values()))))
    client = main_client(home=main.home / "state")
    try:
        x_tr, y_tr, x_te, y_te = _digits()
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        t_train = time.perf_counter()
        # the job is listed by the main device's server (its panel and `parallalx jobs`);
        # `auto` measures every device and trains on those that finish soonest (this small
        # MLP: usually one, since a second device's per-step sync costs more than it adds)
        job = train(model, (x_tr, y_tr), nn.CrossEntropyLoss(),
                    functools.partial(torch.optim.Adam, lr=3e-3), epochs=15, batch_size=64,
                    client=client, torch_threads=1,
                    name="demo: digits MLP", report=ApiClient(main.url, main.token))
        trained = _watch(job, as_json, timeout=120)
        train_s = time.perf_counter() - t_train
    finally:
        client.close()
    with torch.no_grad():
        accuracy = float((trained(x_te).argmax(1) == y_te).float().mean())
    listed = main.api("GET", f"jobs/{job.id}")  # what its panel and `parallalx jobs` show
    samples = job.progress.get("samples_by_worker", {})
    total = sum(samples.values()) or 1
    contribution = [{"device": device_of.get(w, w), "worker": w, "samples": int(n),
                     "share": round(n / total, 4)} for w, n in sorted(samples.items())]
    out = {
        "preflight": job.preflight.to_dict() if job.preflight else None,
        "contribution": contribution,
        "accuracy": round(accuracy, 4),
        "train_samples": len(x_tr),
        "test_samples": len(x_te),
        "steps": job.progress.get("global_step"),
        "restarts": job.restarts,
        "job": {k: listed[k] for k in ("id", "state", "workload", "name")},
        "training_seconds": round(train_s, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    _say(as_json, f"preflight:\n{job.preflight}")
    if job.preflight is not None and job.preflight.placement:
        _say(as_json, f"devices: {job.preflight.placement}")
    for c in contribution:
        _say(as_json, f"  {c['device']:<12} {c['samples']:>7} samples  {100 * c['share']:5.1f} %")
    _say(as_json, f"test accuracy {accuracy:.3f} on {len(x_te)} held-out digits; trained "
                  f"{out['steps']} steps in {train_s:.1f} s ({out['seconds']} s with joining)")
    _say(as_json, f"{main.name}'s job list: {listed['workload']} job {listed['id']} "
                  f"{listed['state']} (its JupyterLab panel shows it; `parallalx jobs` too)")
    return out


if __name__ == "__main__":
    print(json.dumps(run_demo(as_json=True), indent=2))
