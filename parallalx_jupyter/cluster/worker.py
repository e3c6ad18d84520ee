"""Run an accepted device's Dask worker as a supervised subprocess.

The worker runs ``<python> <package>/cluster/worker_main.py --config <json>`` - by *path*,
because the chosen interpreter (another venv/kernel) may not have ``parallalx_jupyter``
installed; ``worker_main.py`` needs only ``distributed`` there (see its docstring for the
worker-side guard). ``PYTHONPATH``/``PYTHONHOME``/``VIRTUAL_ENV`` of this process are not passed
on, so the worker sees its own environment only (``WorkerSpec.extra_pythonpath`` opts in).

Lifecycle (:class:`WorkerSupervisor`): restart with exponential backoff when the worker exits
(that is also how it rejoins a restarted scheduler: distributed 2026.8 workers close when they
lose the scheduler and never reconnect by themselves; with ``death_timeout=None`` a new worker
waits for the scheduler to come back), stop for good when the scheduler refuses admission
(exit 77: revoked) or on :meth:`~WorkerSupervisor.stop` / :meth:`~WorkerSupervisor.revoke`.
Process group + stdin-EOF watchdog: no orphans when the controlling process stops.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ._guard import EXIT_REFUSED
from .supervisor import REFUSED, ProcessSupervisor, child_env
from .tls import validate_device_id, write_private

WORKER_MAIN = Path(__file__).resolve().with_name("worker_main.py")


def local_ip_for(host: str) -> str:
    """The local address the OS would use to reach ``host`` (no packet is sent)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((host, 9))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _parse_bytes(value) -> int | None:
    if value in (None, "", "auto"):
        return None
    if isinstance(value, (int, float)):
        return int(value)
    from dask.utils import parse_bytes

    return int(parse_bytes(value))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _host_of(address: str | None) -> str | None:
    if not address:
        return None
    hostport = address.split("://", 1)[-1]
    if hostport.startswith("["):
        return hostport[1:].split("]", 1)[0]
    return hostport.rsplit(":", 1)[0]


@dataclass
class WorkerSpec:
    """What the accepting device agreed to run."""

    scheduler_address: str  # tls://host:port, from the accepted request
    device_id: str
    ca_file: str  # the cluster CA cert (its fingerprint was shown at accept time)
    cert_file: str  # this device's cert, signed by the cluster CA
    key_file: str  # this device's key (0600, generated here, never sent anywhere)
    worker_dir: str  # config, status, log and scratch space for this worker
    # The cluster's CRL (signed by the CA; from the join, then as the scheduler pushes it):
    # default <worker_dir>/crl.pem. The worker keeps the newest one there for its restarts.
    crl_file: str | None = None
    tls_poll_interval: float = 2.0  # how often the worker looks for a renewed cert / new CRL
    python: str = sys.executable
    name: str | None = None  # default device_id; "<device_id>/<suffix>" for more workers
    listen_host: str | None = None  # default: the interface that routes to the scheduler
    listen_port: int = 0
    contact_address: str | None = None
    nthreads: int = 1
    memory_limit: int | str | None = None  # bytes or "4GiB"; None = Dask's "auto"
    gpus: int = 0  # advertised as resources={"GPU": n}
    cuda_visible_devices: str | None = None  # e.g. "0,1"; sets CUDA_VISIBLE_DEVICES
    resources: dict = field(default_factory=dict)
    death_timeout: float | None = None  # None: wait for the scheduler as long as it takes
    tls_min_version: str = "1.2"
    extra_blocked_handlers: list = field(default_factory=list)
    extra_pythonpath: list = field(default_factory=list)
    env: dict = field(default_factory=dict)
    log_level: str = "INFO"
    memory_terminate_fraction: float = 0.95

    def __post_init__(self):
        validate_device_id(self.device_id)
        if not self.scheduler_address.startswith("tls://"):
            raise ValueError("the scheduler address must be tls://")
        name = self.name or self.device_id
        if name != self.device_id and not name.startswith(self.device_id + "/"):
            raise ValueError("worker name must be the device id or start with '<device_id>/'")
        for host in (self.listen_host, _host_of(self.contact_address)):
            # Addresses are compared literally by the scheduler's admission layer.
            if host and not _is_ip(host):
                raise ValueError(f"use an IP address, not a host name: {host!r:.80}")
        if self.listen_host in ("0.0.0.0", "::", ""):
            if not self.contact_address:
                raise ValueError("binding all interfaces needs an explicit contact_address")

    @property
    def dir(self) -> Path:
        return Path(self.worker_dir)

    @property
    def config_path(self) -> Path:
        return self.dir / "worker-config.json"

    @property
    def status_path(self) -> Path:
        return self.dir / "worker-status.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "worker.log"

    def to_main_config(self) -> dict:
        """The JSON that worker_main.py reads."""
        from distributed.comm import get_address_host

        listen_host = self.listen_host or local_ip_for(get_address_host(self.scheduler_address))
        resources = dict(self.resources)
        if self.gpus:
            resources["GPU"] = self.gpus
        return {
            "scheduler_address": self.scheduler_address,
            "device_id": self.device_id,
            "name": self.name or self.device_id,
            "ca_file": str(self.ca_file),
            "cert_file": str(self.cert_file),
            "key_file": str(self.key_file),
            "crl_file": str(self.crl_file or self.dir / "crl.pem"),
            "tls_poll_interval": float(self.tls_poll_interval),
            "listen_host": listen_host,
            "listen_port": int(self.listen_port),
            "contact_address": self.contact_address,
            "nthreads": int(self.nthreads),
            "memory_limit": _parse_bytes(self.memory_limit),
            "resources": resources,
            "local_directory": str(self.dir / "scratch"),
            "death_timeout": self.death_timeout,
            "tls_min_version": str(self.tls_min_version),
            "extra_blocked_handlers": list(self.extra_blocked_handlers),
            "status_file": str(self.status_path),
            "cuda_visible_devices": self.cuda_visible_devices,
            "log_level": self.log_level,
        }

    def to_dict(self) -> dict:
        return asdict(self)


class WorkerSupervisor:
    """Start, watch, restart and stop one worker process for an accepting device."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 30.0,
        stop_timeout: float = 10.0,
        on_event=None,
    ):
        self.spec = spec
        self.revoked = False
        env = dict(spec.env)
        if spec.extra_pythonpath:
            env["PYTHONPATH"] = os.pathsep.join(str(p) for p in spec.extra_pythonpath)
        limit = _parse_bytes(spec.memory_limit)
        self.supervisor = ProcessSupervisor(
            [spec.python, str(WORKER_MAIN), "--config", str(spec.config_path)],
            name=f"worker:{spec.name or spec.device_id}",
            env=child_env(env),
            cwd=spec.worker_dir,
            log_path=spec.log_path,
            backoff_initial=backoff_initial,
            backoff_max=backoff_max,
            stable_after=stable_after,
            permanent_exit_codes=(EXIT_REFUSED,),
            stop_timeout=stop_timeout,
            # Like Dask's nanny: kill the process tree above this share of its memory limit.
            memory_limit=int(limit * spec.memory_terminate_fraction) if limit else None,
            on_event=on_event,
        )

    @property
    def state(self) -> str:
        """``starting|running|backoff|refused|failed|stopping|stopped`` (process level)."""
        return self.supervisor.state

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts

    async def start(self) -> None:
        self.spec.dir.mkdir(parents=True, exist_ok=True)
        (self.spec.dir / "scratch").mkdir(exist_ok=True)
        os.chmod(self.spec.dir, 0o700)
        try:
            self.spec.status_path.unlink()
        except FileNotFoundError:
            pass
        write_private(self.spec.config_path, json.dumps(self.spec.to_main_config(), indent=1))
        await self.supervisor.start()

    async def stop(self) -> None:
        await self.supervisor.stop()

    async def restart(self) -> None:
        """Restart the worker now. (A renewed ``cert_file`` needs no restart: the worker
        loads it for new connections by itself, see ``_livetls.WorkerTLS``.)"""
        await self.supervisor.restart_now()

    async def revoke(self) -> None:
        """The device stopped sharing (or learned it was revoked): stop and do not restart."""
        self.revoked = True
        await self.supervisor.stop()

    def status(self) -> dict | None:
        """What worker_main last reported: ``{"state", "pid", "address"?, "reason"?}``."""
        try:
            return json.loads(self.spec.status_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    async def wait_joined(self, timeout: float = 60.0) -> dict:
        """Wait until the *current* process reports it joined the scheduler."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status()
            if st and st.get("state") == "running" and st.get("pid") == self.pid:
                return st
            if self.state == REFUSED:
                raise PermissionError((st or {}).get("reason", "admission refused"))
            await asyncio.sleep(0.1)
        raise TimeoutError(f"worker did not join; see {self.spec.log_path}")


    def set_on_event(self, callback) -> None:
        """Called with each of the process's state changes (``ProcessSupervisor.on_event``)."""
        self.supervisor.on_event = callback


class WorkerGroup:
    """A device's workers for one main device when it shares several GPUs: one per GPU
    (``gpus.py``), started, watched and stopped together. Has :class:`WorkerSupervisor`'s
    interface, so the service handles it as the device's one worker."""

    def __init__(self, members: list[WorkerSupervisor]):
        if not members:
            raise ValueError("a worker group needs at least one worker")
        self.members = members
        self.spec = members[0].spec
        self.revoked = False

    @property
    def state(self) -> str:
        """``refused`` if any member was refused, ``running`` when all run, else the first
        member's state that is not ``running``."""
        states = [m.state for m in self.members]
        if REFUSED in states:
            return REFUSED
        return next((st for st in states if st != "running"), "running")

    @property
    def pid(self) -> int | None:
        return self.members[0].pid

    @property
    def restarts(self) -> int:
        return sum(m.restarts for m in self.members)

    async def _each(self, method: str, *args) -> list:
        return list(await asyncio.gather(*(getattr(m, method)(*args) for m in self.members)))

    async def start(self) -> None:
        await self._each("start")

    async def stop(self) -> None:
        await self._each("stop")

    async def restart(self) -> None:
        await self._each("restart")

    async def revoke(self) -> None:
        self.revoked = True
        await self._each("revoke")

    def status(self) -> dict | None:
        """The first member's report that is not ``running`` (why the group is not), else the
        first member's."""
        reports = [m.status() for m in self.members]
        for report in reports:
            if not report or report.get("state") != "running":
                return report
        return reports[0]

    async def wait_joined(self, timeout: float = 60.0) -> dict:
        return (await self._each("wait_joined", timeout))[0]

    def set_on_event(self, callback) -> None:
        for member in self.members:
            member.set_on_event(callback)


def supervise(spec_args: dict, **kwargs) -> WorkerSupervisor | WorkerGroup:
    """The worker(s) a device runs for one main device, from the service's stored spec:
    ``gpu_layout`` (``gpus.py``) None means one worker as the process finds the GPUs, ``[]``
    one worker that sees none, one entry one worker on that GPU, several one worker per GPU
    (named ``<device_id>/gpu<N>``, each in its own directory, the memory limit split)."""
    args = dict(spec_args)
    layout = args.pop("gpu_layout", None)
    if layout is None:
        return WorkerSupervisor(WorkerSpec(**args), **kwargs)
    args.pop("gpus", None)
    if len(layout) <= 1:
        visible = ",".join(str(g) for g in layout)
        return WorkerSupervisor(WorkerSpec(**args, gpus=len(layout),
                                           cuda_visible_devices=visible), **kwargs)
    limit = _parse_bytes(args.pop("memory_limit", None))
    members = []
    for gpu in layout:
        members.append(WorkerSupervisor(WorkerSpec(
            **{**args, "worker_dir": f"{args['worker_dir']}-gpu{gpu}"},
            name=f"{args['device_id']}/gpu{gpu}", gpus=1, cuda_visible_devices=str(gpu),
            memory_limit=limit // len(layout) if limit else None,
        ), **kwargs))
    return WorkerGroup(members)


__all__ = ["WorkerGroup", "WorkerSpec", "WorkerSupervisor", "local_ip_for", "supervise",
           "WORKER_MAIN"]
