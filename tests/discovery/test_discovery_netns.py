"""Two devices on two hosts find each other by their LAN addresses.

``../shared/tools/netns-hosts`` makes two network namespaces (10.77.0.1 and 10.77.0.2) joined by
a bridge that carries multicast, as a home or lab switch does. Each device is a real Jupyter
server inside its namespace with its peer listener on the namespace's address; each lists the
other, at that address, through `parallalx discover` run inside its namespace (the Jupyter
server itself stays on the namespace's own 127.0.0.1). Needs root.
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

from parallalx_jupyter.local_device import LocalDevice

REPO = Path(__file__).resolve().parents[2]
NETNS = REPO.parent / "shared" / "tools" / "netns-hosts"
PREFIX = "pxd"  # apart from the other tests' and the benchmark's hosts
PEER_PORT = 8476

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(240),
    pytest.mark.skipif(
        not (hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("ip")
             and NETNS.exists()),
        reason="network namespaces need root, iproute2 and ../shared/tools/netns-hosts",
    ),
]


def netns(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(NETNS), *args], env=dict(os.environ, NETNS_PREFIX=PREFIX),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def hosts():
    up = netns("up", "2")
    if up.returncode != 0:
        pytest.skip(f"network namespaces unavailable: {up.stderr.strip()[-300:]}")
    try:
        yield
    finally:
        netns("down")


def start_in(host: int, home: Path) -> tuple[LocalDevice, subprocess.Popen[bytes]]:
    """A device's Jupyter server inside host `host` (its own netns: fixed ports are free)."""
    dev = LocalDevice(home=home, name=f"host{host}", port=8888, peer_port=PEER_PORT,
                      extra_config={"peer_ip": f"10.77.0.{host}", "discoverable": True})
    home.mkdir(parents=True)
    dev._write_config()
    env = {**os.environ, "NETNS_PREFIX": PREFIX, "PYTHONUNBUFFERED": "1",
           "JUPYTER_CONFIG_DIR": str(home / "jupyter-config"),
           "JUPYTER_DATA_DIR": str(home / "jupyter-data"),
           "JUPYTER_RUNTIME_DIR": str(home / "jupyter-runtime"), "JUPYTER_PLATFORM_DIRS": "0"}
    with open(dev.log_path, "ab") as log:
        proc = subprocess.Popen([str(NETNS), "run", str(host), sys.executable, "-m",
                                 "jupyter_server"], env=env, stdout=log, stderr=subprocess.STDOUT)
    return dev, proc


def cli_in(host: int, dev: LocalDevice, *args: str) -> subprocess.CompletedProcess[str]:
    return netns("run", str(host), sys.executable, "-m", "parallalx_jupyter.cli", "--home",
                 str(dev.home / "state"), "--json", *args)


def answer(host: int, dev: LocalDevice, proc: subprocess.Popen[bytes], *args: str,
           timeout: float = 90) -> object:
    """The CLI's JSON once the device's server answers (it starts in the meantime)."""
    deadline = time.monotonic() + timeout
    while True:
        out = cli_in(host, dev, *args)
        if out.returncode == 0:
            return json.loads(out.stdout)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{dev.name}: {out.stderr[-500:]}\n{dev.tail_log()}")
        time.sleep(0.5)


def test_devices_on_two_hosts_discover_each_other_by_lan_address(hosts, tmp_path: Path):
    one, p1 = start_in(1, tmp_path / "one")
    two, p2 = start_in(2, tmp_path / "two")
    try:
        id1 = answer(1, one, p1, "device")["id"]
        id2 = answer(2, two, p2, "device")["id"]

        def seen(host: int, dev: LocalDevice, proc, other: str) -> dict:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                rows = [r for r in answer(host, dev, proc, "discover") if r["id"] == other]
                if rows:
                    return rows[0]
                time.sleep(1)
            raise AssertionError(f"{dev.name} never heard {other}\n{dev.tail_log()}")

        row = seen(1, one, p1, id2)
        assert row["name"] == "host2" and row["addresses"] == ["10.77.0.2"]
        assert row["urls"] == [f"https://10.77.0.2:{PEER_PORT}"]
        back = seen(2, two, p2, id1)
        assert back["urls"] == [f"https://10.77.0.1:{PEER_PORT}"]
        text = netns("run", "1", sys.executable, "-m", "parallalx_jupyter.cli", "--home",
                     str(one.home / "state"), "discover")
        assert f"parallalx invite https://10.77.0.2:{PEER_PORT}" in text.stdout, text.stderr
    finally:
        for proc in (p1, p2):
            proc.terminate()
        for proc in (p1, p2):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
