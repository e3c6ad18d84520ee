"""``px.launch`` of a plain DDP loop against ``torchrun`` of the same script.

This file is both the benchmark and the script both sides run. ``train_loop`` is a plain
torchrun-style DDP loop (``dist.init_process_group("gloo")``, DDP, SGD; benchmark (a)'s MLP
64-128-10, global batch 64, one torch thread per rank) that records its own timestamps and
calls ``px.report`` every ``--report-every`` steps (a no-op under torchrun). The baseline is a
real ``torchrun --nproc-per-node 2`` subprocess running this file with ``--rank``; the engine
is ``px.launch(train_loop, ...)`` on a local Dask cluster over TLS (2 workers, one thread each,
configured like parallalx's own: ``cluster/quiet.py``). Gloo over 127.0.0.1 on both sides.

Three figures, each against the baseline measured in the same run:

1. steady-state steps/s, from rank 0's own step timestamps (step ``--warm`` to the last step;
   start-up excluded), torchrun and warm-cluster ``launch`` alternating; median of the paired
   ratios (goal >= 0.97);
2. on a warm cluster (one job has run before): ``launch()`` call -> first step (goal <= 1 s);
3. on a fresh cluster: the first ``launch()`` -> first step, with and without starting the
   cluster, against torchrun's launch -> first step (goal: no slower), with its phases
   (driver marks, rank process start from ``/proc``, the function's own marks).

    python benchmarks/bench_launch.py [--steps 2000] [--repeats 6] [--cold 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

T_MODULE = time.time()  # when this file started executing (the rank's, under torchrun)

BATCH, DIM, CLASSES = 64, 64, 10
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the user's code
def _process_start() -> float | None:
    """Wall-clock start time of this process (``/proc``, 10 ms resolution), or None. The start
    is counted on the boot-time clock, so it is converted through that clock, not ``btime``."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, AttributeError):
        return None


def train_loop(steps: int = 2000, warm: int = 50, report_every: int = 10) -> dict[str, Any]:
    """A plain torchrun-style DDP loop. Returns (rank 0) its own timestamps: wall-clock marks of
    its start-up and perf_counter step times from step ``warm`` to the end."""
    marks = {"process_start": _process_start(), "fn_start": time.time()}
    import torch
    import torch.distributed as dist
    from torch import nn

    marks["torch_imported"] = time.time()
    import parallalx_jupyter as px

    report = px.report  # imports parallalx's rank-side helpers (a no-op outside launch)
    marks["px_imported"] = time.time()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")  # torchrun: env:// rendezvous; launch: already formed
    marks["group"] = time.time()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(
        nn.Sequential(nn.Linear(DIM, 128), nn.ReLU(), nn.Linear(128, CLASSES)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, DIM, generator=g)
    y = (x[:, 0] > 0).long()
    loss_fn = nn.CrossEntropyLoss()
    local = BATCH // world
    marks["built"] = time.time()
    t0 = t_end = time.perf_counter()
    for s in range(steps):
        if s == warm:
            t0 = time.perf_counter()
        lo = s * BATCH + rank * local
        loss = loss_fn(model(x[lo:lo + local]), y[lo:lo + local])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s == 0:
            marks["first_step"] = time.time()
        if report_every and (s + 1) % report_every == 0:
            report(step=s + 1, loss=loss.detach(), t=time.time())
    t_end = time.perf_counter()
    # No dist.destroy_process_group() at the end: on torch 2.13.0+cpu (gloo) it intermittently
    # aborted a torchrun rank ("terminate called without an active exception") and hung one
    # launched rank until the group timeout (HungRankError), with or without a barrier first.
    return {"marks": marks, "rank": rank, "world": world, "steps": steps, "warm": warm,
            "rate": (steps - warm) / (t_end - t0) if steps > warm else 0.0}


def _rank_main(argv: list[str]) -> None:
    """Entry point under torchrun: run the loop, rank 0 writes its result as JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", action="store_true")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    res = train_loop(a.steps, a.warm, a.report_every)
    res["marks"]["module"] = T_MODULE
    if res["rank"] == 0:
        Path(a.out).write_text(json.dumps(res))


# --------------------------------------------------------------------------- torchrun side
_PORT = [29_700 + os.getpid() % 200]


def torchrun(steps: int, warm: int, report_every: int, tmp: Path) -> dict[str, Any]:
    """``torchrun --nproc-per-node 2`` of this file; marks relative to the Popen call."""
    import subprocess

    exe = Path(sys.executable).with_name("torchrun")
    out = tmp / f"torchrun-{time.time_ns()}.json"
    _PORT[0] += 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(exe) if exe.exists() else "torchrun", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_PORT[0]), __file__, "--rank",
           "--steps", str(steps), "--warm", str(warm), "--report-every", str(report_every),
           "--out", str(out)]
    t_call = time.time()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900, check=False)
    wall = time.time() - t_call
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"torchrun failed ({proc.returncode}):\n{proc.stdout.decode()[-3000:]}")
    res = json.loads(out.read_text())
    out.unlink()
    res["phases"] = {k: v - t_call for k, v in res["marks"].items() if v}
    res["wall"] = wall
    return res


# --------------------------------------------------------------------------- launch side
def launch(client: Any, steps: int, warm: int, report_every: int) -> dict[str, Any]:
    """``px.launch(train_loop, ...)``; marks relative to the ``launch()`` call."""
    import parallalx_jupyter as px

    t_call = time.time()
    job = px.launch(train_loop, steps, warm, report_every, client=client, torch_threads=1,
                    report=False)
    res = dict(job.result(900))
    wall = time.time() - t_call
    # the job's timeline (the driver's phases, seconds after the job was made) and the
    # function's own marks (wall clock), both as seconds after the call
    driver = {k: job.created_at + v for k, v in job.timeline.items()}
    res["phases"] = {k: v - t_call for k, v in {**driver, **res["marks"]}.items() if v}
    res["wall"] = wall
    hist = [h for h in job.history if "t" in h and h.get("step", 0) > warm]
    if len(hist) > 1:  # the same rate from the reported timestamps (cross-check)
        res["rate_reported"] = ((hist[-1]["step"] - hist[0]["step"])
                                / (hist[-1]["t"] - hist[0]["t"]))
    return res


def make_cluster(sec: Any) -> tuple[Any, Any]:
    """A local TLS Dask cluster configured like parallalx's (2 workers, 1 thread each)."""
    from distributed import Client, LocalCluster

    from parallalx_jupyter.cluster.quiet import quiet_dask_env

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, protocol="tls://",
        host="127.0.0.1", security=sec, dashboard_address=None,
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **quiet_dask_env()},
    )
    client = Client(cluster, security=sec, set_as_default=False)
    client.wait_for_workers(2, timeout=120)
    return cluster, client


# --------------------------------------------------------------------------- reporting
_ORDER = ["probed", "shipped", "rendezvous", "submitted", "process_start", "module", "fn_start",
          "torch_imported", "px_imported", "group", "built", "first_step"]


def _phases(runs: list[dict[str, float]]) -> str:
    keys = [k for k in _ORDER if all(k in r for r in runs)]
    return ", ".join(f"{k} {statistics.median(r[k] for r in runs):.2f}" for k in keys)


def import_times() -> str:
    """What importing costs in a fresh interpreter on this machine (one run, loaded or not)."""
    import subprocess

    code = ("import time; t=time.time(); import torch; a=time.time(); import torch.distributed; "
            "b=time.time(); import torch._dynamo; c=time.time(); import torch.distributed.fsdp, "
            "torch.distributed.checkpoint.state_dict; d=time.time(); "
            "import parallalx_jupyter.training.rank_process; e=time.time(); "
            "print(f'torch {a-t:.2f}s, torch.distributed {b-a:.2f}s, torch._dynamo {c-b:.2f}s, '"
            "f'fsdp+state_dict {d-c:.2f}s, parallalx rank_process {e-d:.2f}s')")
    t = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    return f"{out.stdout.strip() or out.stderr[-500:]} (interpreter in all {time.time() - t:.2f}s)"


def _load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    if "--rank" in sys.argv[1:]:
        _rank_main(sys.argv[1:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=50)
    ap.add_argument("--report-every", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=6,
                    help="torchrun / warm launch pairs for (1) and (2), alternating")
    ap.add_argument("--cold", type=int, default=3,
                    help="torchrun / fresh-cluster pairs for (3)")
    ap.add_argument("--cold-steps", type=int, default=200)
    ap.add_argument("--no-unreported", action="store_true",
                    help="skip the third arm of each pair: launch() with no px.report calls")
    args = ap.parse_args()

    import tempfile

    import cloudpickle
    import dask
    from distributed.security import Security

    from parallalx_jupyter.cluster.quiet import QUIET_DASK_CONFIG

    if train_loop.__module__ != "__main__":  # imported: ship the loop by value all the same
        cloudpickle.register_pickle_by_value(sys.modules[train_loop.__module__])
    dask.config.set(QUIET_DASK_CONFIG)
    sec = Security.temporary()  # local-only benchmark cluster; never shipped to other devices
    med = statistics.median
    tmp = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    print(_load(), "|", import_times(), flush=True)

    # (3) fresh cluster: the first launch() on it, against torchrun's cold launch
    cold_base, cold_run, cold_total, cluster_up, failures = [], [], [], [], []
    for _ in range(args.cold):
        try:
            base = torchrun(args.cold_steps, 0, args.report_every, tmp)
        except RuntimeError as exc:
            failures.append(f"torchrun: {str(exc)[:300]}")
            print(f"  torchrun FAILED: {failures[-1]}", flush=True)
            continue
        t0 = time.time()
        cluster, client = make_cluster(sec)
        t_up = time.time() - t0
        try:
            run = launch(client, args.cold_steps, 0, args.report_every)
        except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
            failures.append(repr(exc)[:300])
            print(f"  first launch() on a fresh cluster FAILED: {failures[-1]}", flush=True)
            continue
        finally:
            client.close()
            cluster.close()
        cold_base.append(base["phases"])
        cold_run.append(run["phases"])
        cluster_up.append(t_up)
        cold_total.append(t_up + run["phases"]["first_step"])
        print(f"  torchrun launch -> first step {base['phases']['first_step']:.2f}s | fresh "
              f"cluster up {t_up:.2f}s, first launch() -> first step "
              f"{run['phases']['first_step']:.2f}s (cluster start included "
              f"{cold_total[-1]:.2f}s) | {_load()}", flush=True)
    if cold_run:
        print(f"(3) median: torchrun launch -> first step "
              f"{med(b['first_step'] for b in cold_base):.2f}s; fresh cluster: first launch() "
              f"-> first step {med(r['first_step'] for r in cold_run):.2f}s, cluster start "
              f"{med(cluster_up):.2f}s, both {med(cold_total):.2f}s")
        print("    torchrun phases (s after Popen): " + _phases(cold_base))
        print("    first launch phases (s after the call): " + _phases(cold_run))

    # (1) and (2): one warm cluster, torchrun and launch alternating
    if not args.repeats:
        print(_load(), f"| failed runs: {len(failures)}")
        return
    cluster, client = make_cluster(sec)
    try:
        launch(client, 100, 0, args.report_every)  # warms the workers (torch, forkserver)
        pairs, unreported = [], []
        for _ in range(args.repeats):
            try:
                base = torchrun(args.steps, args.warm, args.report_every, tmp)
                run = launch(client, args.steps, args.warm, args.report_every)
                quiet = None if args.no_unreported else launch(client, args.steps, args.warm, 0)
            except Exception as exc:  # noqa: BLE001 - counted and shown, the run goes on
                failures.append(repr(exc)[:300])
                print(f"  launch() FAILED: {failures[-1]}", flush=True)
                continue
            pairs.append((base, run))
            if quiet:
                unreported.append(quiet["rate"] / base["rate"])
            print(f"  torchrun {base['rate']:6.0f} steps/s | launch {run['rate']:6.0f} steps/s "
                  f"(reported {run.get('rate_reported', 0):6.0f}) | ratio "
                  f"{run['rate'] / base['rate']:.3f}"
                  + (f" (no px.report: {unreported[-1]:.3f})" if quiet else "")
                  + " | first step: torchrun "
                  f"{base['phases']['first_step']:.2f}s, warm launch() "
                  f"{run['phases']['first_step']:.2f}s | {_load()}", flush=True)
    finally:
        client.close()
        cluster.close()
    ratios = [r["rate"] / b["rate"] for b, r in pairs]
    print(f"(1) steady state: median ratio launch / torchrun {med(ratios):.3f} (range "
          f"{min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs); median rates launch "
          f"{med(r['rate'] for _, r in pairs):.0f}, torchrun {med(b['rate'] for b, _ in pairs):.0f}"
          f" steps/s (px.report every {args.report_every} steps)")
    if unreported:
        print(f"    launch without px.report: median ratio {med(unreported):.3f} (range "
              f"{min(unreported):.3f}-{max(unreported):.3f})")
    print(f"(2) warm cluster: launch() -> first step median "
          f"{med(r['phases']['first_step'] for _, r in pairs):.2f}s (torchrun launch -> first "
          f"step {med(b['phases']['first_step'] for b, _ in pairs):.2f}s)")
    print("    warm launch phases (s after the call): " + _phases([r["phases"] for _, r in pairs]))
    print(_load(), f"| failed runs: {len(failures)}")


if __name__ == "__main__":
    main()
