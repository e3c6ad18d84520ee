"""The main device's hardened Dask scheduler, and its supervised subprocess.

Hardening
---------
* ``tls://`` only, ``require_encryption=True``, mutual TLS against the per-cluster CA.
* Explicit bind host (default ``127.0.0.1``); ``0.0.0.0`` / ``::`` only with
  ``allow_all_interfaces=True``. The HTTP/dashboard server is bound to loopback only (bokeh is
  optional: without it only the JSON/health/metrics routes exist and ``dashboard_link`` is None);
  the ``distributed.http.proxy`` route is removed.
* Admission (:class:`SchedulerAdmission`, enforced by ``_guard.GuardMixin`` wrapping
  ``Server.handle_comm`` - see ``_guard.py`` for why that hook):

  - the main device's own ``main-client`` certificate (pinned by serial) may use every
    handler: ``register-client``, ``identity``, ``run_function``, ``broadcast``, ``proxy``,
    ``retire_workers``, ``terminate``, ``restart``, plugins, queues, ...;
  - a ``device`` certificate (signed by the CA, not revoked, not expired) may only do what a
    worker does: ``register-worker`` (name must be ``<device_id>`` or ``<device_id>/...``),
    ``heartbeat_worker`` / ``unregister`` / ``set_resources`` / ``retire_workers`` for
    addresses *it* registered, ``who_has``, the P2P-shuffle calls, and the worker stream ops;
  - everything else (including ops added later by extensions) is refused.

* Revocation: :class:`~parallalx_jupyter.cluster.tls.RevocationList` is re-read every second
  and on the ``parallalx_reload_revocations`` RPC (main client only); revoked devices' workers
  are removed (``Scheduler.remove_worker(close=True)``) and their comms aborted at once.
  The CA-signed CRL (``crl.pem``, written by the main device's server process, see
  ``crl.py``) is loaded into this process's TLS contexts (``_livetls.py``), so a revoked
  certificate fails the handshake, and pushed to every worker at registration and on each
  change (``parallalx-crl``), so workers refuse it too.
* Renewal: a device's certificate expires after a short lifetime and is renewed while the
  device stays paired. A worker loads its new certificate for new connections, but the
  batched stream it registered on keeps the old one; so a device is valid until the latest
  not-after among the unrevoked certificates it has presented
  (:meth:`SchedulerAdmission.valid_until`), and its old, open comms are not cut when the old
  certificate expires.

Liveness: a worker silent for 8 s is removed, checked every second (``liveness.py``), so a
device with a pulled cable leaves the cluster view within seconds, not distributed's 5 minutes.

Run in-process with :func:`start_scheduler` or as a subprocess
(``python -m parallalx_jupyter.cluster.scheduler --config <json>``) supervised by
:class:`SchedulerProcess`. The subprocess writes ``scheduler-state.json`` (address, dashboard,
CA fingerprint, workers per device) in the cluster dir, and a chosen port is written back to
the config so a restarted scheduler comes back on the same address and workers can reconnect.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import crl
from ._guard import (
    DENIED_MARKER,
    MAY_FETCH_OP,
    ROLE_DEVICE,
    ROLE_MAIN_CLIENT,
    ROLE_SCHEDULER,
    AdmissionDenied,
    AdmissionPolicy,
    GuardMixin,
    PeerIdentity,
    stop_requested,
)
from ._livetls import CRL_OP, LiveTLS, VerifyFailed
from .quiet import QUIET_DASK_CONFIG
from .supervisor import ProcessSupervisor, child_env
from .tls import ClusterCredentials, RevocationList, write_private

logger = logging.getLogger("parallalx_jupyter.cluster.scheduler")

CONFIG_NAME = "scheduler-config.json"
STATE_NAME = "scheduler-state.json"
LOG_NAME = "scheduler.log"

#: RPC ops a worker device may call on the scheduler.
DEVICE_RPC_OPS = frozenset(
    {
        "register-worker",
        "heartbeat_worker",
        "unregister",
        "who_has",
        "set_resources",
        "retire_workers",
        "shuffle_barrier",
        "shuffle_get",
        "shuffle_get_or_create",
        "shuffle_restrict_task",
        MAY_FETCH_OP,
    }
)
#: Broadcast ops whose replies distributed's client unpickles (``Client._run``).
CLIENT_UNPICKLED_REPLIES = frozenset({"run", "run_coroutine"})
#: Ops a worker device may send on its batched stream after ``register-worker``.
DEVICE_STREAM_OPS = frozenset(
    {
        "task-finished",
        "task-erred",
        "release-worker-data",
        "add-keys",
        "long-running",
        "reschedule",
        "keep-alive",
        "log-event",
        "worker-status-change",
        "request-refresh-who-has",
        "steal-response",
        "close-stream",
    }
)


class SchedulerAdmission(AdmissionPolicy):
    """Scheduler-side policy: main client = everything, devices = worker ops for own workers."""

    def __init__(
        self,
        revocations: RevocationList,
        main_client_serials: set[str],
        scheduler_serials: set[str] = frozenset(),
    ):
        super().__init__(
            trusted_roles=frozenset({ROLE_MAIN_CLIENT, ROLE_SCHEDULER}),
            pinned_serials={
                ROLE_MAIN_CLIENT: set(main_client_serials),
                ROLE_SCHEDULER: set(scheduler_serials),
            },
            peer_ops=DEVICE_RPC_OPS | DEVICE_STREAM_OPS,
        )
        self.revocations = revocations
        #: worker address -> identity of the device that registered it
        self.owners: dict[str, PeerIdentity] = {}
        self._owner_since: dict[str, float] = {}
        #: device -> (latest not-after among the certificates it has presented, that serial)
        self._valid_until: dict[str, tuple[float, str | None]] = {}

    def is_revoked(self, ident: PeerIdentity) -> bool:
        if ident.role != ROLE_DEVICE or not self.revocations.is_identity_revoked(ident):
            return False
        # Refuse on the current list, not the one of the last poll: a device paired again
        # is taken off the file moments before its worker connects (one stat when revoked).
        self.revocations.reload()
        return self.revocations.is_identity_revoked(ident)

    def note(self, ident: PeerIdentity) -> None:
        """Remember a device's newest certificate: a comm only exists if its certificate
        passed the handshake (CA, CRL, dates), so its not-after is the device's to use."""
        if ident.role != ROLE_DEVICE or ident.not_after is None or ident.device_id is None:
            return
        latest = self._valid_until.get(ident.device_id, (0.0, None))[0]
        if ident.not_after > latest and not (self.is_revoked(ident) or ident.expired()):
            self._valid_until[ident.device_id] = (ident.not_after, ident.serial)

    def valid_until(self, ident: PeerIdentity) -> float | None:
        if ident.role != ROLE_DEVICE or ident.not_after is None:
            return ident.not_after
        latest, serial = self._valid_until.get(ident.device_id or "", (0.0, None))
        if serial is not None and self.revocations.is_revoked(serial=serial):
            latest = 0.0  # the renewed certificate was revoked since: it extends nothing
        return max(ident.not_after, latest)

    def expired(self, ident: PeerIdentity) -> bool:
        """Expired, unless the same device has since shown a renewed certificate."""
        return dataclasses.replace(ident, not_after=self.valid_until(ident)).expired()

    def connection_reason(self, ident: PeerIdentity) -> str | None:
        reason = super().connection_reason(
            dataclasses.replace(ident, not_after=self.valid_until(ident))
        )
        if reason is None and self.is_revoked(ident):
            reason = f"device {ident.device_id} is revoked"
        return reason

    def _owned(self, ident: PeerIdentity, address: Any) -> bool:
        owner = self.owners.get(address) if isinstance(address, str) else None
        return owner is not None and owner.device_id == ident.device_id

    def check(self, ident: PeerIdentity, op: str, msg: dict, stream: bool) -> None:
        self.note(ident)
        if self.admitted_before_op_rules(ident, op):
            return
        if ident.role != ROLE_DEVICE:
            raise AdmissionDenied(f"op {op!r} is not allowed for {ident.label}")
        allowed = DEVICE_STREAM_OPS if stream else DEVICE_RPC_OPS
        if op not in allowed:
            raise AdmissionDenied(f"op {op!r} is not allowed for {ident.label}")
        if stream:
            # handle_stream merges the message over {"worker": <its address>}: a device must
            # not speak for another worker or a client.
            if "client" in msg or ("worker" in msg and not self._owned(ident, msg["worker"])):
                raise AdmissionDenied("stream message names another worker or client")
            return
        if op == "register-worker":
            name = str(msg.get("name"))
            if name != ident.device_id and not name.startswith(f"{ident.device_id}/"):
                raise AdmissionDenied(
                    f"worker name {name[:80]!r} must be {ident.device_id!r} or start with "
                    f"'{ident.device_id}/'"
                )
            address = msg.get("address")
            if not isinstance(address, str):
                raise AdmissionDenied("register-worker without an address")
            prev = self.owners.get(address)
            if prev is not None and prev.device_id != ident.device_id:
                raise AdmissionDenied("worker address belongs to another device")
            self.owners[address] = ident
            self._owner_since[address] = time.monotonic()
        elif op in ("heartbeat_worker", "unregister"):
            if not self._owned(ident, msg.get("address")):
                raise AdmissionDenied(f"{op} for a worker this device does not own")
        elif op == "set_resources":
            if not self._owned(ident, msg.get("worker")):
                raise AdmissionDenied("set_resources for a worker this device does not own")
        elif op == "retire_workers":
            workers = msg.get("workers")
            if (
                msg.get("names") is not None
                or not workers
                or not all(self._owned(ident, w) for w in workers)
            ):
                raise AdmissionDenied("retire_workers may only name this device's workers")


def _scheduler_class():
    from distributed import Scheduler

    class AdmissionScheduler(GuardMixin, Scheduler):
        """``distributed.Scheduler`` with the parallalx admission layer installed."""

        def __init__(self, *args, admission: SchedulerAdmission, **kwargs):
            super().__init__(*args, **kwargs)
            self._guard_init(admission)
            self.handlers["parallalx_reload_revocations"] = self.parallalx_reload_revocations
            self.handlers[MAY_FETCH_OP] = self.parallalx_may_fetch
            self.handlers["parallalx_admission_state"] = self.parallalx_admission_state
            self._parallalx_live: LiveTLS | None = None
            self._parallalx_crl_mtime: int | None = None
            self._parallalx_push_tasks: set[asyncio.Task] = set()
            # workers removed for a revocation and not yet reported to the main client:
            # the file poll may enforce a revocation before its RPC arrives
            self._parallalx_unreported: list[str] = []
            #: device -> why its last worker registration was refused, until one is admitted
            self._parallalx_refused: dict[str, dict[str, Any]] = {}

        async def broadcast(self, *, msg: dict, workers=None, on_error="raise", **kwargs):
            """No ``run`` reaches a device's worker (they refuse it anyway): its answer would
            be handed to the main client, which unpickles ``run`` replies that are bytes."""
            if msg.get("op") not in CLIENT_UNPICKLED_REPLIES:
                return await super().broadcast(
                    msg=msg, workers=workers, on_error=on_error, **kwargs
                )
            targets = list(self.workers) if workers is None else list(workers)
            devices = [w for w in targets if w in self._admission.owners]
            others = [w for w in targets if w not in devices]
            refused = PermissionError(
                f"{DENIED_MARKER}: functions are not run on a device's worker"
            )
            if devices and on_error == "raise":
                raise refused
            out = (
                await super().broadcast(msg=msg, workers=others, on_error=on_error, **kwargs)
                if others or kwargs.get("hosts")
                else {}
            )
            if on_error in ("return", "return_pickle"):
                from distributed.protocol.pickle import dumps

                for w in devices:
                    out[w] = refused if on_error == "return" else dumps(refused)
            return out

        def parallalx_may_fetch(self, device: str = "", keys: Any = ()) -> bool:
            """RPC (a worker, before handing data to another device's worker): are all
            ``keys`` inputs of a task now processing on one of ``device``'s workers?"""
            owners = self._admission.owners
            if not isinstance(keys, (list, tuple)):
                return False
            for key in keys:
                ts = self.tasks.get(key) if isinstance(key, (str, bytes, int, tuple)) else None
                if ts is None or not any(
                    dts.processing_on is not None
                    and getattr(owners.get(dts.processing_on.address), "device_id", None)
                    == device
                    for dts in ts.dependents
                ):
                    return False
            return True

        def _parallalx_join_refused(self, ident: PeerIdentity, reason: str) -> None:
            if ident.device_id is None:
                return
            self._parallalx_refused[ident.device_id] = {"reason": reason, "at": time.time()}
            while len(self._parallalx_refused) > 100:  # a flood of refused devices: the oldest go
                self._parallalx_refused.pop(next(iter(self._parallalx_refused)))
            plugin = self.plugins.get("parallalx-state")
            if plugin is not None:
                plugin._write()

        async def parallalx_reload_revocations(self) -> list[str]:
            """RPC (main client only): re-read revoked.json and crl.pem and enforce them now."""
            self._admission.revocations.reload()
            self.parallalx_load_crl()
            await self.parallalx_enforce()
            removed, self._parallalx_unreported = self._parallalx_unreported, []
            return removed

        def parallalx_load_crl(self, push: bool = True) -> bool:
            """Load ``crl.pem`` into this process's TLS contexts if it changed on disk, and
            push it to every worker; returns whether it changed."""
            live = self._parallalx_live
            if live is None or live.crl_file is None:
                return False
            try:
                mtime = os.stat(live.crl_file).st_mtime_ns
            except FileNotFoundError:
                logger.error("%s is gone; keeping the CRL loaded before", live.crl_file)
                return False
            if mtime == self._parallalx_crl_mtime:
                return False
            try:
                live.use_crl(live.crl_file)
            except VerifyFailed as err:
                logger.error("not loading %s: %s", live.crl_file, err)
                return False
            self._parallalx_crl_mtime = mtime
            logger.info("CRL %s loaded", live.crl_number)
            if push:
                self.parallalx_push_crl(list(self.workers))
            return True

        def parallalx_push_crl(self, addresses: list[str]) -> None:
            """Send the CRL to these workers (in the background, a few tries each)."""
            for address in addresses:
                task = asyncio.ensure_future(self._parallalx_push_one(address))
                self._parallalx_push_tasks.add(task)
                task.add_done_callback(self._parallalx_push_tasks.discard)

        async def _parallalx_push_one(self, address: str) -> None:
            live = self._parallalx_live
            if live is None or live.crl_file is None:
                return
            adm: SchedulerAdmission = self._admission
            for attempt in range(3):
                owner = adm.owners.get(address)
                if address not in self.workers or (
                    owner is not None and (adm.is_revoked(owner) or adm.expired(owner))
                ):
                    return
                text = Path(live.crl_file).read_text()
                try:
                    await asyncio.wait_for(
                        getattr(self.rpc(address), CRL_OP)(
                            crl=text,
                            number=int(live.crl_number or 0),
                            serials=sorted(adm.revocations.serials),
                            devices=sorted(adm.revocations.devices),
                        ),
                        10,
                    )
                    return
                except Exception as err:  # the worker may be busy starting or going away
                    logger.warning("pushing the CRL to %s failed (%s)", address, err)
                    await asyncio.sleep(1.0 + attempt)

        def parallalx_admission_state(self) -> dict:
            return {"workers": workers_by_device(self)}

        async def parallalx_enforce(self) -> list[str]:
            """Remove workers of revoked/expired devices; abort their other comms."""
            adm: SchedulerAdmission = self._admission
            removed = []
            now = time.monotonic()
            for address, ident in list(adm.owners.items()):
                bad = adm.is_revoked(ident) or adm.expired(ident)
                if bad and address in self.workers:
                    logger.warning(
                        "removing worker %s of %s (revoked/expired)", address, ident.label
                    )
                    await self.remove_worker(
                        address=address, stimulus_id=f"parallalx-revoke-{time.time()}", close=True
                    )
                    removed.append(address)
                    self._parallalx_unreported.append(address)
                    del self._parallalx_unreported[:-1000]
                if bad or (
                    address not in self.workers and now - adm._owner_since.get(address, now) > 60
                ):
                    adm.owners.pop(address, None)
                    adm._owner_since.pop(address, None)
            for comm in self.comms_of(lambda i: adm.is_revoked(i) or adm.expired(i)):
                comm.abort()
            return removed

    AdmissionScheduler.__name__ = "Scheduler"  # dask config lookups use the class name
    AdmissionScheduler.__qualname__ = "Scheduler"
    return AdmissionScheduler


def workers_by_device(scheduler) -> dict[str, list[dict]]:
    """``{device_id: [{address, name, nthreads, memory_limit, resources}]}``."""
    adm: SchedulerAdmission = scheduler._admission
    out: dict[str, list[dict]] = {}
    for address, ws in scheduler.workers.items():
        owner = adm.owners.get(address)
        device = owner.device_id if owner is not None else "(main)"
        out.setdefault(device, []).append(
            {
                "address": address,
                "name": str(ws.name),
                "nthreads": ws.nthreads,
                "memory_limit": ws.memory_limit,
                "resources": dict(ws.resources),
            }
        )
    return out


@dataclass
class SchedulerConfig:
    """Everything the scheduler process needs; persisted as ``scheduler-config.json``."""

    cluster_dir: str
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port once; it is then written back and reused
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 0
    allow_all_interfaces: bool = False
    contact_address: str | None = None
    worker_ttl: str | None = None  # None: liveness.WORKER_TTL_S (a cut device leaves in ~9 s)
    tls_min_version: str = "1.2"
    revocation_poll_interval: float = 1.0
    log_level: str = "INFO"

    def validate(self) -> None:
        if self.host in ("", "0.0.0.0", "::") and not self.allow_all_interfaces:
            raise ValueError(
                f"refusing to bind the scheduler to all interfaces ({self.host!r}); "
                "set allow_all_interfaces=True or give an explicit address"
            )
        if not _is_loopback(self.dashboard_host):
            raise ValueError("the dashboard is bound to loopback only (127.0.0.1 or ::1)")
        if not (0 <= int(self.port) < 65536 and 0 <= int(self.dashboard_port) < 65536):
            raise ValueError("port out of range")
        if str(self.tls_min_version) not in ("1.2", "1.3"):
            raise ValueError("tls_min_version must be 1.2 or 1.3")

    @property
    def path(self) -> Path:
        return Path(self.cluster_dir) / CONFIG_NAME

    @property
    def state_path(self) -> Path:
        return Path(self.cluster_dir) / STATE_NAME

    def save(self) -> Path:
        write_private(self.path, json.dumps(dataclasses.asdict(self), indent=1))
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SchedulerConfig:
        data = json.loads(Path(path).read_text())
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})


def _bokeh_available() -> bool:
    try:
        import distributed.dashboard.scheduler  # noqa: F401
    except ImportError:
        return False
    return True


def _write_state(config: SchedulerConfig, scheduler, status: str, **extra) -> dict:
    from distributed.comm import get_address_host_port

    host, port = get_address_host_port(scheduler.address) if scheduler.address else (None, None)
    http = scheduler.http_server
    http_address = f"http://{config.dashboard_host}:{http.port}" if http is not None else None
    state = {
        "version": 1,
        "status": status,
        "pid": os.getpid(),
        "address": scheduler.address,
        "host": host,
        "port": port,
        "http_address": http_address,
        "dashboard_link": f"{http_address}/status" if http and _bokeh_available() else None,
        "cluster_id": scheduler._parallalx_cluster_id,
        "ca_fingerprint": scheduler._parallalx_ca_fingerprint,
        "updated_at": time.time(),
        "workers": workers_by_device(scheduler),
        "refused": dict(getattr(scheduler, "_parallalx_refused", {})),
    }
    state.update(extra)
    write_private(config.state_path, json.dumps(state, indent=1))
    return state


def _state_plugin(config: SchedulerConfig):
    """SchedulerPlugin keeping ``scheduler-state.json`` current as workers come and go."""
    from distributed.diagnostics.plugin import SchedulerPlugin

    class StatePlugin(SchedulerPlugin):
        name = "parallalx-state"

        def __init__(self):
            self.scheduler = None

        async def start(self, scheduler) -> None:
            self.scheduler = scheduler

        def _write(self) -> None:
            if self.scheduler is not None and self.scheduler.address:
                try:
                    _write_state(config, self.scheduler, "running")
                except Exception:  # pragma: no cover
                    logger.exception("could not write scheduler state")

        def add_worker(self, scheduler, worker: str) -> None:
            owner = scheduler._admission.owners.get(worker)
            if owner is not None:
                scheduler._parallalx_refused.pop(owner.device_id, None)
            self._write()
            # its CRL may be older than ours (kept from before a restart, or from its join)
            scheduler.parallalx_push_crl([worker])

        def remove_worker(self, scheduler, worker: str, **kwargs) -> None:
            scheduler._admission.owners.pop(worker, None)
            self._write()

    return StatePlugin()


async def start_scheduler(config: SchedulerConfig):
    """Start the hardened scheduler in this process; returns the running Scheduler.

    Credentials (CA, scheduler and main-client certs) must exist: see
    :meth:`ClusterCredentials.ensure`. This process never needs the CA *key*.
    """
    import dask
    from dask.utils import parse_timedelta
    from tornado.ioloop import PeriodicCallback

    from . import liveness
    from .connect import guard_main_process

    config.validate()
    guard_main_process()  # before any comm: a device's pickles never reach the decoder
    cdir = Path(config.cluster_dir)
    if (cdir / "scheduler.crt").exists():
        creds = ClusterCredentials.from_files(cdir)  # no CA key needed in this process
    else:
        creds = ClusterCredentials.ensure(cdir, hosts=[config.host])
    if creds.crl_file is None or not creds.crl_file.exists():
        raise FileNotFoundError(
            f"{cdir / 'crl.pem'} is missing: the main device writes it with the CA "
            "(ClusterCredentials.ensure); without it no certificate could be checked"
        )
    live = LiveTLS(creds.ca_file, creds.scheduler_cert, creds.scheduler_key)
    live.use_crl(creds.crl_file)  # raises VerifyFailed for a CRL that is not the CA's
    crl_mtime = creds.crl_file.stat().st_mtime_ns
    security = live.security(config.tls_min_version)
    admission = SchedulerAdmission(
        RevocationList.in_dir(cdir),
        main_client_serials={creds.serial_of(ROLE_MAIN_CLIENT)},
        scheduler_serials={creds.serial_of(ROLE_SCHEDULER)},
    )
    routes = [
        r
        for r in dask.config.get("distributed.scheduler.http.routes")
        if r != "distributed.http.proxy"
    ]
    kwargs: dict[str, Any] = {}
    ttl_s = (
        parse_timedelta(config.worker_ttl) if config.worker_ttl else liveness.WORKER_TTL_S
    )
    with dask.config.set(
        {
            **QUIET_DASK_CONFIG,
            "distributed.comm.require-encryption": True,
            "distributed.scheduler.http.routes": routes,
        }
    ):
        cls = _scheduler_class()
        scheduler = cls(
            admission=admission,
            security=security,
            host=config.host,
            port=int(config.port),
            protocol="tls",
            contact_address=config.contact_address,
            dashboard_address=f"{config.dashboard_host}:{int(config.dashboard_port)}",
            dashboard=_bokeh_available(),
            **kwargs,
        )
        liveness.apply(scheduler, ttl_s)  # before it starts: checked with its other callbacks
        scheduler._parallalx_cluster_id = creds.cluster_id
        scheduler._parallalx_ca_fingerprint = creds.ca_fingerprint
        scheduler._parallalx_live = live
        scheduler._parallalx_crl_mtime = crl_mtime
        await scheduler
    plugin = _state_plugin(config)
    await plugin.start(scheduler)
    scheduler.add_plugin(plugin, name=plugin.name)

    async def _poll():
        try:
            if admission.revocations.reload():
                logger.info("revocation list changed; enforcing")
            scheduler.parallalx_load_crl()
            await scheduler.parallalx_enforce()
        except Exception:  # pragma: no cover
            logger.exception("revocation enforcement failed")

    pc = PeriodicCallback(_poll, int(config.revocation_poll_interval * 1000))
    scheduler.periodic_callbacks["parallalx-revocations"] = pc
    pc.start()
    _write_state(config, scheduler, "running")
    logger.info("parallalx scheduler at %s (CA %s)", scheduler.address, creds.ca_fingerprint)
    return scheduler


async def _serve(config_path: str, parent_watch: bool) -> int:

    config = SchedulerConfig.load(config_path)
    scheduler = await start_scheduler(config)
    stopping = stop_requested(parent_watch)
    done = asyncio.ensure_future(scheduler.finished())
    await asyncio.wait(
        [done, asyncio.ensure_future(stopping.wait())], return_when="FIRST_COMPLETED"
    )
    try:
        _write_state(config, scheduler, "stopped")
    except Exception:  # pragma: no cover
        pass
    await scheduler.close(reason="parallalx-stop")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m parallalx_jupyter.cluster.scheduler")
    parser.add_argument("--config", required=True)
    parser.add_argument("--parent-watch", action="store_true", help="exit on stdin EOF")
    args = parser.parse_args(argv)
    config = SchedulerConfig.load(args.config)
    logging.basicConfig(
        level=getattr(logging, str(config.log_level).upper(), logging.INFO),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    return asyncio.run(_serve(args.config, args.parent_watch))


class SchedulerProcess:
    """Controller (in the Jupyter server) for the supervised scheduler subprocess.

    >>> sp = SchedulerProcess(SchedulerConfig(cluster_dir=..., host="192.168.1.5"))
    >>> state = await sp.start()          # {"address": "tls://192.168.1.5:40123", ...}
    >>> client = await sp.client()        # main-client cert: the only admin identity
    >>> await sp.revoke_device(device_id) # worker gone within seconds, cert refused after
    >>> await sp.stop()

    After a restart of the controlling process, ``SchedulerProcess.from_cluster_dir(dir)``
    re-forms the same cluster (same CA, same address/port, same revocations).
    """

    def __init__(
        self,
        config: SchedulerConfig,
        *,
        python: str = sys.executable,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        on_event=None,
    ):
        config.validate()
        self.config = config
        self.python = python
        self.credentials = ClusterCredentials.ensure(config.cluster_dir, hosts=[config.host])
        self.revocations = RevocationList.in_dir(config.cluster_dir)
        self._user_on_event = on_event
        self.supervisor = ProcessSupervisor(
            [
                python,
                "-m",
                "parallalx_jupyter.cluster.scheduler",
                "--config",
                str(config.path),
                "--parent-watch",
            ],
            name="scheduler",
            env=child_env(self._pythonpath_env(), drop_python_path=False),
            log_path=Path(config.cluster_dir) / LOG_NAME,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            on_event=on_event,
        )

    @staticmethod
    def _pythonpath_env() -> dict[str, str]:
        # Make sure the child imports *this* copy of the package.
        pkg_parent = str(Path(__file__).resolve().parents[2])
        pp = os.environ.get("PYTHONPATH", "")
        parts = [pkg_parent] + [p for p in pp.split(os.pathsep) if p and p != pkg_parent]
        return {"PYTHONPATH": os.pathsep.join(parts)}

    @classmethod
    def from_cluster_dir(cls, cluster_dir: str | os.PathLike, **kwargs) -> SchedulerProcess:
        return cls(SchedulerConfig.load(Path(cluster_dir) / CONFIG_NAME), **kwargs)

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self, timeout: float = 60.0) -> dict:
        self.config.save()
        await self.supervisor.start()
        state = await self.wait_running(timeout)
        if int(self.config.port) == 0:
            self.config.port = int(state["port"])  # reuse the same port on every restart
            self.config.save()
        return state

    async def wait_running(self, timeout: float = 60.0) -> dict:
        """Wait until the *current* scheduler process reports itself running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.read_state()
            pid = self.supervisor.pid
            if state and state.get("status") == "running" and pid and state.get("pid") == pid:
                return state
            if self.supervisor.state in ("failed", "refused", "stopped"):
                break
            await asyncio.sleep(0.1)
        raise TimeoutError(
            f"scheduler did not start (state {self.supervisor.state}); see {self.log_path}"
        )

    async def stop(self) -> None:
        await self.supervisor.stop()

    # --- information -----------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return Path(self.config.cluster_dir) / LOG_NAME

    def read_state(self) -> dict | None:
        try:
            return json.loads(self.config.state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @property
    def address(self) -> str | None:
        state = self.read_state()
        return state.get("address") if state else None

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid

    @property
    def ca_fingerprint(self) -> str:
        return self.credentials.ca_fingerprint

    def security(self):
        """``Security`` with the main-client certificate."""
        return self.credentials.client_security(self.config.tls_min_version)

    async def client(self, **kwargs):
        """An asynchronous ``distributed.Client`` connected as the main device."""
        from distributed import Client

        from .connect import guard_main_process

        guard_main_process()
        kwargs.setdefault("timeout", 20)
        return await Client(self.address, security=self.security(), asynchronous=True, **kwargs)

    # --- revocation ------------------------------------------------------------------------
    async def revoke_device(self, device_id: str, reason: str = "") -> list[str]:
        """Persist the revocation, then tell the scheduler to enforce it now.

        Persisting first means it holds even if the scheduler is down or restarts; the
        scheduler also polls the file every ``revocation_poll_interval`` seconds. Every
        certificate the device was issued goes into the CA-signed CRL (``crl.py``): from then
        on its handshakes fail, on the scheduler and, once pushed, on every worker.
        """
        crl.revoke_device(self.config.cluster_dir, device_id, reason)
        self.revocations.reload()
        return await self._reload_revocations()

    async def revoke_serial(self, serial, reason: str = "") -> list[str]:
        crl.revoke_serial(self.config.cluster_dir, serial, reason)
        self.revocations.reload()
        return await self._reload_revocations()

    async def _reload_revocations(self) -> list[str]:
        from distributed.core import rpc

        address = self.address
        if not address:
            return []
        try:
            async with rpc(
                address, connection_args=self.security().get_connection_args("client")
            ) as r:
                return list(await asyncio.wait_for(r.parallalx_reload_revocations(), 10))
        except (OSError, asyncio.TimeoutError) as e:
            logger.warning("scheduler unreachable for revocation (%s); it will poll the file", e)
            return []


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


__all__ = [
    "DEVICE_RPC_OPS",
    "DEVICE_STREAM_OPS",
    "SchedulerAdmission",
    "SchedulerConfig",
    "SchedulerProcess",
    "start_scheduler",
    "workers_by_device",
]

if __name__ == "__main__":
    sys.exit(main())
