"""Cluster test helpers: real scheduler and worker processes over TLS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from parallalx_jupyter.cluster import (
    ClusterCA,
    SchedulerConfig,
    SchedulerProcess,
    WorkerSpec,
    WorkerSupervisor,
    make_csr,
    make_security,
    sign_csr,
    write_private,
)


class Harness:
    """Starts processes for one test and stops all of them at teardown."""

    def __init__(self, root: Path):
        self.root = root
        self.schedulers: list[SchedulerProcess] = []
        self.workers: list[WorkerSupervisor] = []

    @property
    def cluster_dir(self) -> Path:
        return self.root / "main" / "cluster"

    async def scheduler(self, **config) -> SchedulerProcess:
        config.setdefault("cluster_dir", str(self.cluster_dir))
        config.setdefault("revocation_poll_interval", 0.5)
        sp = SchedulerProcess(SchedulerConfig(**config), backoff_initial=0.2)
        self.schedulers.append(sp)
        await sp.start()
        return sp

    def device_credentials(self, device_id: str, ca_dir: Path | None = None, **kw) -> dict:
        """CSR made "on the device", signed by the cluster CA (or another CA's dir)."""
        ddir = self.root / "devices" / device_id
        key_pem, csr_pem = make_csr(device_id)
        ca = ClusterCA.load(ca_dir or self.cluster_dir)
        cert_pem = sign_csr(ca, csr_pem, device_id, **kw)
        write_private(ddir / "worker.key", key_pem)
        write_private(ddir / "worker.crt", cert_pem)
        write_private(ddir / "ca.crt", ca.cert_pem)
        creds = {
            "device_id": device_id,
            "dir": ddir,
            "key_file": str(ddir / "worker.key"),
            "cert_file": str(ddir / "worker.crt"),
            "ca_file": str(ddir / "ca.crt"),
        }
        crl = (ca_dir or self.cluster_dir) / "crl.pem"
        if crl.exists():  # what the join hands the device with its certificate
            write_private(ddir / "crl.pem", crl.read_bytes())
            creds["crl_file"] = str(ddir / "crl.pem")
        return creds

    def security(self, creds: dict):
        return make_security(creds["ca_file"], creds["cert_file"], creds["key_file"])

    async def worker(
        self, sp: SchedulerProcess, creds: dict, *, join: bool = True, **spec
    ) -> WorkerSupervisor:
        spec.setdefault("listen_host", "127.0.0.1")
        spec.setdefault("nthreads", 1)
        spec.setdefault("memory_limit", "2GiB")
        ws = WorkerSupervisor(
            WorkerSpec(
                scheduler_address=spec.pop("scheduler_address", None) or sp.address,
                device_id=creds["device_id"],
                ca_file=creds["ca_file"],
                cert_file=creds["cert_file"],
                key_file=creds["key_file"],
                crl_file=creds.get("crl_file"),
                worker_dir=str(creds["dir"] / f"w{len(self.workers)}"),
                **spec,
            ),
            backoff_initial=0.2,
            backoff_max=1.0,
            stop_timeout=5,
        )
        self.workers.append(ws)
        await ws.start()
        if join:
            await ws.wait_joined(30)
        return ws

    async def close(self) -> None:
        await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in self.schedulers), return_exceptions=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return True


async def wait_until(predicate, timeout: float, interval: float = 0.1):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(interval)
