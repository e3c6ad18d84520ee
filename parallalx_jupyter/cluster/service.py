"""The cluster as the Jupyter extension sees it: one object per device, pure asyncio.

On the **main** device it owns the per-cluster CA and the supervised scheduler process, signs
the CSRs of paired worker devices and revokes them. On a **worker** device it joins the main
device's scheduler: generate a key here, send the CSR over the pairing channel, prepare the
selected environment, and run a supervised worker in it. What it has joined is persisted in
`<home>/workers/<main-id>/join.json`, and whether the scheduler was running in
`<home>/cluster/running`, so both sides re-form after a restart of either Jupyter server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .scheduler import SchedulerConfig, SchedulerProcess
from .tls import ClusterCA, make_csr, write_private
from .worker import WorkerSpec, WorkerSupervisor

log = logging.getLogger("parallalx_jupyter.cluster")

Emit = Callable[[str, dict[str, Any]], None]
# (python, main versions, job requirements, peer_id) -> None; raises with a clear message
PrepareEnv = Callable[[str, dict[str, str], list[str], str], Awaitable[None]]


class ClusterError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def main_versions() -> dict[str, str]:
    """This (main) device's versions of the packages every worker must match."""
    from ..environments import local_versions

    return {name: version for name, version in local_versions().items() if version}


def host_of_url(url: str) -> str:
    host = urlsplit(url).hostname or "127.0.0.1"
    return host


class ClusterService:
    def __init__(
        self,
        home: Path,
        device_id: str,
        emit: Emit,
        scheduler_ip: str = "127.0.0.1",
        scheduler_port: int = 0,
        prepare_env: PrepareEnv | None = None,
    ) -> None:
        self.home = home
        self.device_id = device_id
        self.emit = emit
        self.scheduler_ip = scheduler_ip
        self.scheduler_port = scheduler_port
        self.prepare_env = prepare_env
        self.cluster_dir = home / "cluster"
        self.workers_dir = home / "workers"
        self.scheduler: SchedulerProcess | None = None
        self.workers: dict[str, WorkerSupervisor] = {}
        self.joins: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ main device

    @property
    def _running_flag(self) -> Path:
        return self.cluster_dir / "running"

    async def start(self) -> dict[str, Any]:
        async with self._lock:
            if self.scheduler is None:
                all_ifaces = self.scheduler_ip in ("0.0.0.0", "::", "")
                config_path = self.cluster_dir / "scheduler-config.json"
                if config_path.exists():
                    config = SchedulerConfig.load(config_path)
                    config.host = self.scheduler_ip
                    config.allow_all_interfaces = all_ifaces
                    if self.scheduler_port:
                        config.port = self.scheduler_port
                else:
                    config = SchedulerConfig(
                        cluster_dir=str(self.cluster_dir), host=self.scheduler_ip,
                        port=self.scheduler_port, allow_all_interfaces=all_ifaces,
                    )
                self.cluster_dir.mkdir(parents=True, exist_ok=True)
                scheduler = SchedulerProcess(config)
                try:
                    await scheduler.start()
                except Exception as err:
                    await scheduler.stop()
                    raise ClusterError(500, f"the scheduler did not start: {err}") from None
                self.scheduler = scheduler
                write_private(self._running_flag, b"1")
                self.emit("cluster-state", {"state": "started"})
        return self.state()

    async def stop(self) -> dict[str, Any]:
        async with self._lock:
            self._running_flag.unlink(missing_ok=True)
            local = self.workers.pop(self.device_id, None)
            if local is not None:
                await local.revoke()
            self.joins.pop(self.device_id, None)
            shutil.rmtree(self.workers_dir / self.device_id, ignore_errors=True)
            if self.scheduler is not None:
                await self.scheduler.stop()
                self.scheduler = None
                self.emit("cluster-state", {"state": "stopped"})
        return self.state()

    async def offer_info(self) -> dict[str, Any]:
        """What an invite shows the other device: where it will connect and which CA it will
        trust. Starting the scheduler here fixes both before the user decides."""
        await self.ensure_started()
        assert self.scheduler is not None
        return {"scheduler_port": int(self.scheduler.config.port),
                "ca_fingerprint": self.scheduler.ca_fingerprint}

    async def ensure_started(self) -> None:
        if self.scheduler is None:
            await self.start()

    def sign_join(self, device_id: str, csr_pem: str) -> dict[str, Any]:
        """Sign a paired worker device's CSR; the CA key never leaves this device."""
        assert self.scheduler is not None
        ca = ClusterCA.load(self.cluster_dir)
        from .tls import CSRError, sign_csr

        self.scheduler.revocations.unrevoke_device(device_id)
        try:
            cert = sign_csr(ca, csr_pem.encode(), device_id,
                            revocations=self.scheduler.revocations)
        except CSRError as err:
            raise ClusterError(400, f"certificate request refused: {err}") from None
        port = self.scheduler.config.port
        return {
            "cert": cert.decode(),
            "ca": ca.cert_pem.decode(),
            "ca_fingerprint": ca.fingerprint,
            "scheduler_port": int(port),
            "requirements": main_versions(),
        }

    async def revoke_device(self, device_id: str) -> None:
        if self.scheduler is not None:
            await self.scheduler.revoke_device(device_id, "revoked by the main device")
        elif (self.cluster_dir / "ca.crt").exists():
            from .tls import RevocationList

            RevocationList.in_dir(self.cluster_dir).revoke_device(device_id, "revoked")

    async def add_self(self, python: str = sys.executable, nthreads: int = 1) -> dict[str, Any]:
        """Contribute a worker of this main device too (its own cert, same admission rules)."""
        await self.ensure_started()
        assert self.scheduler is not None
        key_pem, csr_pem = make_csr(self.device_id)
        signed = self.sign_join(self.device_id, csr_pem.decode())
        host = "127.0.0.1" if self.scheduler_ip in ("0.0.0.0", "::") else self.scheduler_ip
        await self._run_worker(self.device_id, host, key_pem, signed, python,
                               {"nthreads": nthreads})
        return self.state()

    # ------------------------------------------------------------------ worker device

    async def join(
        self,
        main_id: str,
        main_url: str,
        exchange: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        python: str,
        limits: dict[str, Any],
        expected: dict[str, Any] | None = None,
    ) -> None:
        """Join `main_id`'s cluster: CSR over the pairing channel, environment, worker.
        `expected` is the scheduler port and CA fingerprint the user saw when accepting."""
        self._set_join(main_id, {"state": "requesting-certificate", "message": None})
        try:
            key_pem, csr_pem = make_csr(self.device_id)
            signed = await exchange({"csr": csr_pem.decode()})
            if expected and (signed.get("ca_fingerprint") != expected["ca_fingerprint"]
                             or signed.get("scheduler_port") != expected["scheduler_port"]):
                raise ClusterError(
                    409, "the main device's cluster CA or scheduler changed since you accepted; "
                         "ask for a new invitation")
            self._set_join(main_id, {"state": "preparing-environment"})
            if self.prepare_env is not None:
                await self.prepare_env(python, dict(signed.get("requirements") or {}),
                                       list(limits.get("requirements") or []), main_id)
            await self._run_worker(main_id, host_of_url(main_url), key_pem, signed, python,
                                   limits)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # reported to the user; nothing half-started is left
            message = getattr(err, "message", None) or str(err) or type(err).__name__
            log.warning("joining %s failed: %s", main_id, message)
            await self.leave(main_id, keep_status=True)
            self._set_join(main_id, {"state": "failed", "message": message})

    async def _run_worker(
        self, main_id: str, host: str, key_pem: bytes, signed: dict[str, Any], python: str,
        limits: dict[str, Any],
    ) -> None:
        wdir = self.workers_dir / main_id
        wdir.mkdir(parents=True, exist_ok=True)
        os.chmod(wdir, 0o700)
        write_private(wdir / "worker.key", key_pem)
        write_private(wdir / "worker.crt", signed["cert"])
        write_private(wdir / "ca.crt", signed["ca"])
        address = f"tls://{host if ':' not in host else f'[{host}]'}:{signed['scheduler_port']}"
        spec_args = {
            "scheduler_address": address,
            "device_id": self.device_id,
            "ca_file": str(wdir / "ca.crt"),
            "cert_file": str(wdir / "worker.crt"),
            "key_file": str(wdir / "worker.key"),
            "worker_dir": str(wdir / "run"),
            "python": python,
            "nthreads": int(limits.get("nthreads") or 1),
            "memory_limit": (int(limits["memory_limit_gb"] * 2**30)
                             if limits.get("memory_limit_gb") else None),
            "gpus": int(limits.get("gpus") or 0),
            "extra_pythonpath": [str(self._package_shim())],
        }
        write_private(wdir / "join.json", json.dumps({
            "main_id": main_id, "spec": spec_args, "ca_fingerprint": signed.get("ca_fingerprint"),
        }))
        await self._start_supervisor(main_id, spec_args)

    def _package_shim(self) -> Path:
        """A directory holding only a link to this package, put on the worker's PYTHONPATH.

        Training tasks import parallalx_jupyter inside the worker, and the selected interpreter
        may be another environment that lacks it; exposing just this (pure-Python) package,
        not the server's whole site-packages, keeps that environment's own torch and dask."""
        shim = self.workers_dir / ".pythonpath"
        link = shim / "parallalx_jupyter"
        target = Path(__file__).resolve().parents[1]
        shim.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink() or link.resolve() != target:
            link.unlink(missing_ok=True)
            link.symlink_to(target, target_is_directory=True)
        return shim

    async def _start_supervisor(self, main_id: str, spec_args: dict[str, Any]) -> None:
        old = self.workers.pop(main_id, None)
        if old is not None:
            await old.revoke()
        supervisor = WorkerSupervisor(WorkerSpec(**spec_args), backoff_max=10.0)
        self.workers[main_id] = supervisor
        self._set_join(main_id, {"state": "starting-worker",
                                 "scheduler": spec_args["scheduler_address"]})
        await supervisor.start()
        try:
            await supervisor.wait_joined(timeout=60)
        except (TimeoutError, PermissionError) as err:
            # keep supervising: the main device may simply be offline right now
            self._set_join(main_id, {"state": "waiting-for-scheduler", "message": str(err)})
            return
        self._set_join(main_id, {"state": "running", "message": None})

    async def leave(self, main_id: str, keep_status: bool = False) -> None:
        """Stop sharing with `main_id`: stop the worker at once and forget the join."""
        supervisor = self.workers.pop(main_id, None)
        if supervisor is not None:
            await supervisor.revoke()
        shutil.rmtree(self.workers_dir / main_id, ignore_errors=True)
        if not keep_status:
            self.joins.pop(main_id, None)
            self.emit("worker-state", {"peer_id": main_id, "state": "stopped"})

    def _set_join(self, main_id: str, update: dict[str, Any]) -> None:
        entry = self.joins.setdefault(main_id, {"main_id": main_id})
        entry.update(update)
        self.emit("worker-state", {"peer_id": main_id, "state": entry["state"],
                                   "message": entry.get("message") or ""})

    # ------------------------------------------------------------------ lifecycle

    async def restore(self) -> None:
        """Re-form after a restart: the scheduler if it was running, and every join."""
        if self._running_flag.exists():
            try:
                await self.start()
            except ClusterError as err:
                log.error("could not re-form the cluster: %s", err.message)
        if not self.workers_dir.exists():
            return
        for join_file in sorted(self.workers_dir.glob("*/join.json")):
            try:
                data = json.loads(join_file.read_text())
                await self._start_supervisor(data["main_id"], data["spec"])
            except Exception:
                log.exception("could not restore the worker in %s", join_file.parent)

    async def close(self) -> None:
        """Server shutdown: stop processes but keep the persisted state for the next start."""
        for supervisor in list(self.workers.values()):
            await supervisor.stop()
        self.workers.clear()
        if self.scheduler is not None:
            await self.scheduler.stop()
            self.scheduler = None

    def state(self) -> dict[str, Any]:
        sched = self.scheduler.read_state() if self.scheduler is not None else None
        workers = []
        if sched:
            for device_id, entries in (sched.get("workers") or {}).items():
                for w in entries:
                    workers.append({"device_id": device_id, **w})
        return {
            "running": self.scheduler is not None,
            "scheduler_address": sched.get("address") if sched else None,
            "dashboard_link": sched.get("dashboard_link") if sched else None,
            "ca_fingerprint": sched.get("ca_fingerprint") if sched else None,
            "workers": workers,
            "serving": [
                {**entry, "process": (self.workers[m].state if m in self.workers else None)}
                for m, entry in sorted(self.joins.items())
            ],
        }
