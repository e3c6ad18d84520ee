"""Pull the cable of a device in the middle of training, on real separate hosts.

``../shared/tools/netns-hosts`` makes two network namespaces with their own addresses joined
through a bridge; ``cut 2`` takes host 2's bridge port down, so its packets vanish: no RST, no
FIN, the process lives on. The scheduler, one worker and the training driver run in host 1,
the other worker in host 2, all over mutual TLS. Training must notice within the group timeout
(plus heartbeats), drop the device and finish alone from the last checkpoint. Needs root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NETNS = REPO.parent / "shared" / "tools" / "netns-hosts"
PREFIX = "pxt"  # not the benchmark's "pxh": both may exist side by side
GROUP_TIMEOUT = 8.0

pytestmark = [
    pytest.mark.timeout(360),
    pytest.mark.skipif(
        not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip")
             and NETNS.exists()),
        reason="network namespaces need root, iproute2 and ../shared/tools/netns-hosts",
    ),
]


def netns(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NETNS), *args], env=dict(os.environ, NETNS_PREFIX=PREFIX),
                          capture_output=True, text=True, check=True, timeout=60)


def spawn_in(cluster, host: int, args: list[str], log: str) -> None:  # noqa: ANN001
    """Start one of the cluster's processes inside host ``host`` (killed by the test)."""
    out = open(cluster.workdir / log, "wb")  # noqa: SIM115 - closed with the process
    cluster.procs[log] = subprocess.Popen(
        [str(NETNS), "run", str(host), sys.executable, *args],
        env=dict(cluster.env, NETNS_PREFIX=PREFIX), stdout=out, stderr=subprocess.STDOUT,
        cwd=cluster.workdir,
    )


@pytest.fixture
def hosts():
    netns("up", "2")
    try:
        yield
    finally:
        netns("down")


def test_pulled_cable_is_detected_and_training_finishes_alone(
    hosts, unstarted_tls_cluster, tmp_path: Path
) -> None:
    cluster = unstarted_tls_cluster
    address = "tls://10.77.0.1:8786"
    scheduler = ["-m", "distributed.cli.dask_scheduler", "--protocol", "tls",
                 "--host", "10.77.0.1", "--port", "8786", "--no-dashboard"]
    spawn_in(cluster, 1, [*scheduler, *cluster.tls_args], "scheduler.log")
    time.sleep(2)
    for host in (1, 2):
        worker = ["-m", "distributed.cli.dask_worker", address, "--no-nanny", "--nthreads", "1",
                  "--host", f"10.77.0.{host}", "--name", f"host{host}", "--no-dashboard",
                  "--memory-limit", "0"]
        spawn_in(cluster, host, [*worker, *cluster.tls_args], f"worker{host}.log")
    t = cluster.tls
    script = Path(__file__).with_name("netns_train_driver.py")
    driver = subprocess.Popen(
        [str(NETNS), "run", "1", sys.executable, str(script), address, t["ca"],
         t["client_cert"], t["client_key"], str(tmp_path / "checkpoints"), str(GROUP_TIMEOUT)],
        env=dict(cluster.env, NETNS_PREFIX=PREFIX), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    try:
        ready = json.loads(driver.stdout.readline() or "{}")
        assert ready.get("ready"), (ready, driver.stderr.read()[-3000:] if driver.poll() else "")
        [lost] = [w for w in ready["workers"] if "10.77.0.2" in w]
        netns("cut", "2")
        cut_at = time.time()
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
        for p in cluster.procs.values():
            p.kill()
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": err[-3000:]}
    assert "error" not in result, result["error"] + "\n" + cluster.log("worker1.log")
    [restart] = result["restarts"]
    detected = restart["time"] - cut_at
    assert restart["lost_workers"] == [lost]
    assert detected <= GROUP_TIMEOUT + 8.0, detected
    assert restart["repeated_steps"] <= 25
    assert result["world_size"] == 1
    assert result["global_step"] == 750  # 24,000 samples / 32: every step of the epoch
    assert result["accuracy"] > 0.9
    print(f"\ncable pulled: detected and restarted after {detected:.2f}s "
          f"(group timeout {GROUP_TIMEOUT}s), resumed at step {restart['resume_step']}")
