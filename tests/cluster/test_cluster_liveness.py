"""A worker that falls silent leaves the scheduler, and so the cluster view, within seconds.

Real processes on 127.0.0.1: a ``distributed`` scheduler with parallalx's liveness preload (the
same :func:`parallalx_jupyter.cluster.liveness.apply` parallalx's own scheduler runs) and two
workers without nanny; one is frozen with SIGSTOP, as a pulled cable or a sleeping laptop
looks to the scheduler. distributed's default would keep it listed for 5 to 10 minutes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from parallalx_jupyter.cluster.liveness import CHECK_S, WORKER_TTL_S

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_a_frozen_worker_leaves_the_cluster_within_seconds(tmp_path: Path) -> None:
    from distributed import Client

    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path)
    sched_file = tmp_path / "scheduler.json"
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(name: str, *args: str) -> None:
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        procs[name] = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=log,
                                       stderr=subprocess.STDOUT, cwd=tmp_path)

    spawn("scheduler", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
          "--no-dashboard", "--scheduler-file", str(sched_file),
          "--preload", "parallalx_jupyter.cluster.liveness")
    client = None
    try:
        deadline = time.monotonic() + 60
        while not sched_file.exists():
            assert time.monotonic() < deadline, (tmp_path / "scheduler.log").read_text()
            time.sleep(0.1)
        time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        for name in ("frozen", "awake"):
            spawn(name, "distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1",
                  "--name", name, "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "0")
        client = Client(address, timeout="30s")
        client.wait_for_workers(2, timeout=60)

        def names() -> set[str]:
            info = client.sync(client.scheduler.identity, n_workers=-1)["workers"]
            return {str(w["name"]) for w in info.values()}

        os.kill(procs["frozen"].pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        while "frozen" in names():
            assert time.monotonic() - frozen_at < WORKER_TTL_S + CHECK_S + 6, names()
            time.sleep(0.2)
        left_after = time.monotonic() - frozen_at
        assert names() == {"awake"}  # heartbeating workers stay, however long it took
        assert left_after >= WORKER_TTL_S - 1.0, left_after  # no hair trigger either
        print(f"\nfrozen worker left the scheduler after {left_after:.1f}s "
              f"(TTL {WORKER_TTL_S}s, checked every {CHECK_S}s)")
    finally:
        if client is not None:
            client.close(timeout=5)
        for p in procs.values():
            if p.poll() is None:
                p.kill()  # SIGKILL also ends a stopped process
            p.wait(10)
