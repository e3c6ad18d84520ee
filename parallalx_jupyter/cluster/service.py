"""The cluster as the Jupyter extension sees it: one object per device, pure asyncio.

On the **main** device it owns the per-cluster CA and the supervised scheduler process, signs
the CSRs of paired worker devices and revokes them. Unless `main_device_trains` is off, the
main device's own worker starts with the scheduler (a new user would not know to run
`add-self`); there is one at most, however often the cluster starts or the server restarts.
On a **worker** device it joins the main device's scheduler: generate a key here, send the
CSR over the pairing channel, prepare the selected environment, and run a supervised worker in
it. What it has joined is persisted in `<home>/workers/<main-id>/join.json`, and whether the
scheduler was running in `<home>/cluster/running`, so both sides re-form after a restart of
either Jupyter server.

Certificates are short-lived (`cert_ttl`, 24 h by default; env `PARALLALX_CLUSTER_CERT_TTL`,
seconds) and renewed while the device stays paired: at 2/3 of a worker certificate's lifetime
the device asks the main device again over the pairing channel (the same signed `cluster.join`
message, with a CSR for the key it already has; the main device's own worker is signed
locally), writes the new certificate in place, and the running worker loads it for new
connections by itself (`_livetls.WorkerTLS`): no restart, the cluster keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import ParallalxError
from . import crl
from ._livetls import crl_number, read_crl_number
from .gpus import gpu_layout, visible_gpus
from .scheduler import SchedulerConfig, SchedulerProcess
from .tls import (
    CLOCK_SKEW,
    DEFAULT_CERT_TTL,
    ClusterCA,
    cert_fingerprint,
    cert_identity,
    make_csr,
    write_private,
)
from .worker import WorkerGroup, WorkerSupervisor, supervise

log = logging.getLogger("parallalx_jupyter.cluster")

Emit = Callable[[str, dict[str, Any]], None]
# (python, main versions, job requirements, peer_id) -> None; raises with a clear message
PrepareEnv = Callable[[str, dict[str, str], list[str], str], Awaitable[None]]
# the signed `cluster.join` round trip to a main device: {"csr": ...} -> what sign_join returns
Exchange = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# main_id -> an Exchange to that main device, or None when it is no longer paired
ExchangeFor = Callable[[str], Awaitable[Exchange | None]]

#: a worker certificate is renewed once this share of its lifetime has passed
RENEW_AT = 2 / 3
MIN_CERT_TTL = 30.0
CERT_TTL_ENV = "PARALLALX_CLUSTER_CERT_TTL"


def cert_ttl_from_env() -> float:
    """Seconds a worker certificate lives: ``$PARALLALX_CLUSTER_CERT_TTL`` or 24 h."""
    raw = os.environ.get(CERT_TTL_ENV)
    if not raw:
        return DEFAULT_CERT_TTL.total_seconds()
    ttl = float(raw)
    if not ttl >= MIN_CERT_TTL:
        raise ValueError(f"{CERT_TTL_ENV} must be at least {MIN_CERT_TTL:.0f} seconds")
    return ttl


def renewal_due(cert: x509.Certificate) -> dt.datetime:
    """When to renew: ``RENEW_AT`` of the lifetime (issue time = not-before + the clock-skew
    back-dating ``ClusterCA`` applies), so it follows from the certificate alone."""
    issued = cert.not_valid_before_utc + CLOCK_SKEW
    return issued + (cert.not_valid_after_utc - issued) * RENEW_AT


class ClusterError(ParallalxError):
    """The cluster cannot do what was asked (not running, not available on this server, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status)


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
        cert_ttl: float | None = None,
        main_device_trains: bool = True,
    ) -> None:
        self.home = home
        self.device_id = device_id
        self.emit = emit
        self.scheduler_ip = scheduler_ip
        self.scheduler_port = scheduler_port
        self.prepare_env = prepare_env
        #: lifetime of the worker certificates this (main) device signs, seconds
        self.cert_ttl = float(cert_ttl) if cert_ttl is not None else cert_ttl_from_env()
        #: set by the device manager: how to reach a main device again to renew
        self.exchange_for: ExchangeFor | None = None
        self._renewals: dict[str, asyncio.Task[None]] = {}
        self._retries: dict[str, asyncio.Future[None]] = {}
        self.cluster_dir = home / "cluster"
        self.workers_dir = home / "workers"
        self.scheduler: SchedulerProcess | None = None
        self.workers: dict[str, WorkerSupervisor | WorkerGroup] = {}
        self.joins: dict[str, dict[str, Any]] = {}
        self._lock = asyncio.Lock()
        #: this (main) device's own worker starts with its scheduler (`add-self` otherwise)
        self.main_device_trains = main_device_trains
        self._own_lock = asyncio.Lock()
        self._own_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ main device

    @property
    def _running_flag(self) -> Path:
        return self.cluster_dir / "running"

    async def start(self) -> dict[str, Any]:
        """Start the scheduler and, unless opted out, this device's own worker; idempotent.
        The answer waits for the own worker, so it lists it."""
        await self._start_scheduler()
        if self.main_device_trains:
            await self._ensure_own_worker()
        return self.state()

    async def _start_scheduler(self) -> None:
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

    async def stop(self) -> dict[str, Any]:
        await self._cancel_own_start()
        async with self._lock:
            self._running_flag.unlink(missing_ok=True)
            self._stop_renewal(self.device_id)
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
        """The cluster, for a device that is invited or asks for its certificate: the own
        worker starts in the background, so that the peer's round trip does not wait for it."""
        if self.scheduler is None:
            await self._start_scheduler()
        if self.main_device_trains:
            self._spawn_own_worker()

    def sign_join(self, device_id: str, csr_pem: str) -> dict[str, Any]:
        """Sign a paired worker device's CSR; the CA key never leaves this device."""
        assert self.scheduler is not None
        ca = ClusterCA.load(self.cluster_dir)
        from .tls import CSRError, sign_csr

        self.scheduler.revocations.unrevoke_device(device_id)
        try:
            cert = sign_csr(ca, csr_pem.encode(), device_id, ttl=self.cert_ttl,
                            revocations=self.scheduler.revocations)
        except CSRError as err:
            raise ClusterError(400, f"certificate request refused: {err}") from None
        port = self.scheduler.config.port
        # the CA-signed revocation list: the worker checks peers against it from its start
        crl_pem = crl.ensure_crl(self.cluster_dir, ca).read_text()
        return {
            "cert": cert.decode(),
            "crl": crl_pem,
            "ca": ca.cert_pem.decode(),
            "ca_fingerprint": ca.fingerprint,
            "scheduler_port": int(port),
            "requirements": main_versions(),
        }

    async def revoke_device(self, device_id: str) -> None:
        if self.scheduler is not None:
            await self.scheduler.revoke_device(device_id, "revoked by the main device")
        elif (self.cluster_dir / "ca.key").exists():
            crl.revoke_device(self.cluster_dir, device_id, "revoked")

    async def add_self(self, python: str = sys.executable, nthreads: int = 1) -> dict[str, Any]:
        """Contribute a worker of this main device too (its own cert, same admission rules).
        One at most: with other settings it replaces the running one, with the same ones it is
        refused with a message saying it runs (409)."""
        await self._start_scheduler()
        async with self._own_lock:
            running = self.workers.get(self.device_id)
            joined = (self.joins.get(self.device_id) or {}).get("state") == "running"
            if joined and running is not None and (running.spec.python,
                                                   running.spec.nthreads) == (python, nthreads):
                raise ClusterError(
                    409, f"this device already trains in its cluster: its worker runs in "
                         f"{python} with {nthreads} thread(s)")
            await self._add_own_worker(python, nthreads)
        return self.state()

    async def _add_own_worker(self, python: str, nthreads: int) -> None:
        assert self.scheduler is not None
        key_pem, csr_pem = make_csr(self.device_id)
        signed = self.sign_join(self.device_id, csr_pem.decode())
        host = "127.0.0.1" if self.scheduler_ip in ("0.0.0.0", "::") else self.scheduler_ip
        await self._run_worker(self.device_id, host, key_pem, signed, python,
                               {"nthreads": nthreads})

    async def _ensure_own_worker(self) -> None:
        """This device's own worker, unless it runs: with the interpreter and threads it last
        ran with (an `add-self` choice survives restarts), else add-self's defaults."""
        async with self._own_lock:
            if self.device_id in self.workers or self.scheduler is None:
                return
            python, nthreads = sys.executable, 1
            try:
                spec = json.loads((self.workers_dir / self.device_id / "join.json").read_text())
                python, nthreads = str(spec["spec"]["python"]), int(spec["spec"]["nthreads"])
            except (OSError, ValueError, KeyError, TypeError):
                pass
            try:
                await self._add_own_worker(python, nthreads)
            except Exception as err:  # shown as the own worker's state; the cluster runs on
                message = getattr(err, "message", None) or str(err) or type(err).__name__
                log.warning("this device's own worker did not start: %s", message)
                await self.leave(self.device_id, keep_status=True)
                self._set_join(self.device_id, {"state": "failed", "message": message})

    def _spawn_own_worker(self) -> None:
        if self.device_id in self.workers or (self._own_task and not self._own_task.done()):
            return
        self._own_task = asyncio.ensure_future(self._ensure_own_worker())

    async def _cancel_own_start(self) -> None:
        task, self._own_task = self._own_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ------------------------------------------------------------------ worker device

    async def join(
        self,
        main_id: str,
        main_url: str,
        exchange: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]],
        python: str,
        limits: dict[str, Any],
        expected: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> None:
        """Join `main_id`'s cluster: CSR over the pairing channel, environment, worker.
        `expected` is the scheduler port and CA fingerprint the user saw when accepting;
        `request_id` the accepted request the grant comes from (shown with the join)."""
        self._set_join(main_id, {"state": "requesting-certificate", "message": None,
                                 "request_id": request_id})
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
        self._store_crl(wdir, signed.get("crl"))
        address = f"tls://{host if ':' not in host else f'[{host}]'}:{signed['scheduler_port']}"
        spec_args = {
            "scheduler_address": address,
            "device_id": self.device_id,
            "ca_file": str(wdir / "ca.crt"),
            "cert_file": str(wdir / "worker.crt"),
            "key_file": str(wdir / "worker.key"),
            "crl_file": str(wdir / "crl.pem"),
            "worker_dir": str(wdir / "run"),
            "python": python,
            "nthreads": int(limits.get("nthreads") or 1),
            "memory_limit": (int(limits["memory_limit_gb"] * 2**30)
                             if limits.get("memory_limit_gb") else None),
            "gpus": int(limits.get("gpus") or 0),
            "extra_pythonpath": [str(self._package_shim())],
            # one worker per shared GPU (gpus.py), fixed now: a restart re-forms the same
            "gpu_layout": gpu_layout(_asked_gpus(limits), await asyncio.to_thread(visible_gpus)),
        }
        write_private(wdir / "join.json", json.dumps({
            "main_id": main_id, "spec": spec_args, "ca_fingerprint": signed.get("ca_fingerprint"),
            "asks": worker_asks(limits),
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
        supervisor = supervise(spec_args, backoff_max=10.0)

        def on_event(event: dict[str, Any]) -> None:
            if event.get("state") == "refused" and self.workers.get(main_id) is supervisor:
                self._refused(main_id, supervisor)

        supervisor.set_on_event(on_event)
        self.workers[main_id] = supervisor
        self._start_renewal(main_id)
        await self._start_and_join(main_id, supervisor,
                                   {"scheduler": spec_args["scheduler_address"]})

    async def _start_and_join(self, main_id: str, supervisor: WorkerSupervisor | WorkerGroup,
                              update: dict[str, Any] | None = None) -> None:
        """Start the worker process and wait until it joined. A refusal is ``on_event``'s to
        handle (``_refused``: backoff while granted); a timeout keeps it supervised, as the
        main device may simply be offline right now."""
        self._set_join(main_id, {"state": "starting-worker", "next_retry_at": None,
                                 **(update or {})})
        await supervisor.start()
        try:
            await supervisor.wait_joined(timeout=60)
        except TimeoutError as err:
            self._set_join(main_id, {"state": "waiting-for-scheduler", "message": str(err)})
            return
        except PermissionError:
            return
        self._set_join(main_id, {"state": "running", "message": None})

    def _refused(self, main_id: str, supervisor: WorkerSupervisor | WorkerGroup) -> None:
        """The scheduler refused our worker (at its start or any later reconnect). A refusal
        can be a moment stale (a re-pair the scheduler had not read yet), so while we are still
        paired and granted, join again with backoff; the user sees why and may Retry now."""
        reason = (supervisor.status() or {}).get("reason") or "admission refused"
        self._set_join(main_id, {"state": "refused",
                                 "message": f"refused by the main device: {reason}"})
        task = self._retries.get(main_id)
        if main_id != self.device_id and (task is None or task.done()):
            self._retries[main_id] = asyncio.ensure_future(
                self._retry_refused(main_id, supervisor))

    async def _retry_refused(self, main_id: str,
                             supervisor: WorkerSupervisor | WorkerGroup) -> None:
        delay = REFUSED_RETRY_INITIAL
        try:
            while self.workers.get(main_id) is supervisor and supervisor.state == "refused":
                self._set_join(main_id, {"next_retry_at": time.time() + delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, REFUSED_RETRY_MAX)
                if self.workers.get(main_id) is not supervisor or supervisor.state != "refused":
                    return
                if self.exchange_for is None or await self.exchange_for(main_id) is None:
                    return  # no longer paired or granted: nothing to retry for
                await self._start_and_join(main_id, supervisor)
        finally:
            if main_id in self.joins:
                self._set_join(main_id, {"next_retry_at": None})

    async def retry_join(self, main_id: str) -> bool:
        """The user's Retry: start a refused or stopped worker for `main_id` again now. False
        when there is no worker to retry (the join failed before one existed)."""
        supervisor = self.workers.get(main_id)
        if supervisor is None or not (self.workers_dir / main_id / "join.json").exists():
            return False
        if supervisor.state in ("running", "starting", "backoff"):
            return True
        task = self._retries.pop(main_id, None)
        if task is not None:
            task.cancel()
        await self._start_and_join(main_id, supervisor)
        if supervisor.state == "refused":
            self._refused(main_id, supervisor)  # back to retrying with backoff
        return True

    def serves_with(self, main_id: str, asks: dict[str, Any]) -> bool:
        """Whether our worker for `main_id` runs with the settings `asks` grants (same worker
        settings, same cluster): a new grant like that needs no new worker."""
        if main_id not in self.workers:
            return False
        try:
            join = json.loads((self.workers_dir / main_id / "join.json").read_text())
        except (OSError, ValueError):
            return False
        return isinstance(join, dict) and join.get("asks") == worker_asks(asks)

    async def leave(self, main_id: str, keep_status: bool = False) -> None:
        """Stop sharing with `main_id`: stop the worker at once and forget the join."""
        self._stop_renewal(main_id)
        retry = self._retries.pop(main_id, None)
        if retry is not None:
            retry.cancel()
        supervisor = self.workers.pop(main_id, None)
        if supervisor is not None:
            await supervisor.revoke()
        shutil.rmtree(self.workers_dir / main_id, ignore_errors=True)
        if not keep_status:
            self.joins.pop(main_id, None)
            self.emit("worker-state", {"peer_id": main_id, "state": "stopped"})

    # ------------------------------------------------------------------ renewal

    @staticmethod
    def _store_crl(wdir: Path, crl_pem: Any) -> None:
        """Keep the CRL the main device sent unless the worker already holds a newer one."""
        if not isinstance(crl_pem, str) or "-----BEGIN X509 CRL-----" not in crl_pem:
            return
        path = wdir / "crl.pem"
        held = read_crl_number(path)
        number = crl_number(crl_pem)
        if held is not None and (number is None or number <= held):
            return
        write_private(path, crl_pem)
        os.chmod(path, 0o644)

    def _start_renewal(self, main_id: str) -> None:
        self._stop_renewal(main_id)
        self._renewals[main_id] = asyncio.ensure_future(self._renew_loop(main_id))

    def _stop_renewal(self, main_id: str) -> None:
        task = self._renewals.pop(main_id, None)
        if task is not None:
            task.cancel()

    async def _renew_loop(self, main_id: str) -> None:
        """Renew the worker certificate for `main_id` at ``RENEW_AT`` of its lifetime, for as
        long as this device serves that main device; retry (sooner as expiry nears) on
        failure, e.g. while the main device is offline."""
        cert_path = self.workers_dir / main_id / "worker.crt"
        while True:
            try:
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            except (FileNotFoundError, ValueError):
                return
            now = dt.datetime.now(dt.timezone.utc)
            wait = (renewal_due(cert) - now).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 3600.0))
                continue
            try:
                await self.renew(main_id)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                left = (cert.not_valid_after_utc - now).total_seconds()
                retry = min(60.0, max(2.0, left / 10)) if left > 0 else 60.0
                message = getattr(err, "message", None) or str(err) or type(err).__name__
                log.warning("renewing the certificate for %s failed (%s); retrying in %.0f s",
                            main_id, message, retry)
                await asyncio.sleep(retry)

    async def renew(self, main_id: str) -> None:
        """Get a new certificate for the worker serving `main_id` (same key) and put it in
        place; the worker loads it for its new connections (no restart)."""
        wdir = self.workers_dir / main_id
        join = json.loads((wdir / "join.json").read_text())
        key_pem = (wdir / "worker.key").read_bytes()
        _, csr_pem = make_csr(self.device_id, key_pem=key_pem)
        if main_id == self.device_id:
            signed = self.sign_join(self.device_id, csr_pem.decode())
        else:
            exchange = await self.exchange_for(main_id) if self.exchange_for else None
            if exchange is None:
                raise ClusterError(409, "not paired with that main device any more")
            signed = await exchange({"csr": csr_pem.decode()})
        cert_pem = str(signed.get("cert") or "").encode()
        ca_pem = (wdir / "ca.crt").read_bytes()
        expected = join.get("ca_fingerprint") or cert_fingerprint(ca_pem)
        if signed.get("ca_fingerprint") != expected:
            raise ClusterError(409, "the main device's cluster CA changed; ask for a new "
                                    "invitation")
        _check_renewed(cert_pem, ca_pem, key_pem, self.device_id)
        self._store_crl(wdir, signed.get("crl"))
        write_private(wdir / "worker.crt", cert_pem)
        log.info("renewed the worker certificate for %s", main_id)
        supervisor = self.workers.get(main_id)
        status = supervisor.status() if supervisor is not None else None
        if supervisor is not None and not (
            status and status.get("state") == "running" and status.get("pid") == supervisor.pid
        ):
            # Not in the cluster (e.g. its certificate ran out while the main device was
            # away): a worker only watches for a new certificate once it has joined, so
            # start it over with this one.
            await supervisor.restart()

    def _set_join(self, main_id: str, update: dict[str, Any]) -> None:
        entry = self.joins.setdefault(main_id, {"main_id": main_id})
        entry.update(update)
        self.emit("worker-state", {"peer_id": main_id, "state": entry["state"],
                                   "message": entry.get("message") or ""})

    # ------------------------------------------------------------------ lifecycle

    async def restore(self) -> None:
        """Re-form after a restart: the scheduler if it was running (with the own worker), and
        every join."""
        if self._running_flag.exists():
            try:
                await self.ensure_started()
            except ClusterError as err:
                log.error("could not re-form the cluster: %s", err.message)
        if not self.workers_dir.exists():
            return
        for join_file in sorted(self.workers_dir.glob("*/join.json")):
            try:
                data = json.loads(join_file.read_text())
                if data["main_id"] == self.device_id and self._own_task is not None:
                    continue  # being started by ensure_started
                await self._start_supervisor(data["main_id"], data["spec"])
            except Exception:
                log.exception("could not restore the worker in %s", join_file.parent)

    async def close(self) -> None:
        """Server shutdown: stop processes but keep the persisted state for the next start."""
        await self._cancel_own_start()
        for main_id in list(self._renewals):
            self._stop_renewal(main_id)
        for retry in self._retries.values():
            retry.cancel()
        self._retries.clear()
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
                    workers.append({"device_id": device_id, **w,
                                    "this_device": device_id == self.device_id})
        own = self.joins.get(self.device_id)
        return {
            "running": self.scheduler is not None,
            "scheduler_address": sched.get("address") if sched else None,
            "dashboard_link": sched.get("dashboard_link") if sched else None,
            "ca_fingerprint": sched.get("ca_fingerprint") if sched else None,
            "workers": workers,
            # devices whose last worker registration this scheduler refused, and why
            "refused_joins": [
                {"device_id": device_id, **entry}
                for device_id, entry in sorted(((sched or {}).get("refused") or {}).items())
            ],
            "serving": [
                {**entry, "process": (self.workers[m].state if m in self.workers else None)}
                for m, entry in sorted(self.joins.items()) if m != self.device_id
            ],
            # this device's own worker: how its start went (it is listed in `workers` once in)
            "own_worker": None if own is None else {
                **own, "process": (self.workers[self.device_id].state
                                   if self.device_id in self.workers else None)},
        }


#: backoff (seconds) between joins again after the main device refused our worker
REFUSED_RETRY_INITIAL = 2.0
REFUSED_RETRY_MAX = 60.0

def _asked_gpus(limits: dict[str, Any]) -> int | None:
    """The GPUs an accepted invitation asked for: None when it did not say (all of them)."""
    gpus = limits.get("gpus")
    return None if gpus is None else int(gpus)


#: what a grant says about the worker itself; a new grant differing in none of them keeps it
WORKER_ASKS = ("nthreads", "memory_limit_gb", "gpus", "requirements", "cluster")


def worker_asks(asks: dict[str, Any]) -> dict[str, Any]:
    return {k: asks.get(k) for k in WORKER_ASKS}


def _check_renewed(cert_pem: bytes, ca_pem: bytes, key_pem: bytes, device_id: str) -> None:
    """A renewed certificate must be the CA's, for our key, naming this device, and current:
    a bad one written in place would fail every later handshake of the worker."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
    except Exception as err:
        raise ClusterError(502, f"the renewed certificate is not the cluster CA's: {err}") from None
    key = serialization.load_pem_private_key(key_pem, password=None)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(serialization.Encoding.DER, spki) != key.public_key(
    ).public_bytes(serialization.Encoding.DER, spki):
        raise ClusterError(502, "the renewed certificate is not for this worker's key")
    ident = cert_identity(cert_pem)
    if ident.device_id != device_id or ident.expired():
        raise ClusterError(502, "the renewed certificate names another device or has expired")
