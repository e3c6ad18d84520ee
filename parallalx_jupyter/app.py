"""ParallalxApp: the Jupyter server extension that gives a device its identity and peer listener.

Each trait can also be set with an environment variable `PARALLALX_<TRAIT>` (e.g.
`PARALLALX_PEER_PORT=8477`), which is what lets several devices run side by side on one host:
give each its own `home` and ports. Config files and the command line still win over the
environment.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import psutil
from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Float, Int, Unicode, default

from ._version import __version__
from .cluster.service import ClusterService
from .environments.service import EnvironmentService
from .files import write_private
from .identity import DeviceIdentity
from .jobs.registry import JobRegistry
from .jobs.spawner import JobSpawner
from .manager import DeviceManager, PairingSettings
from .server import events
from .server.handlers import handlers
from .server.peer import PeerListener
from .store import Store

SERVER_INFO_FILE = "server.json"


def _env(name: str) -> str | None:
    value = os.environ.get(f"PARALLALX_{name.upper()}")
    return value if value not in (None, "") else None


def _env_default(name: str, cast: Any, fallback: Any) -> Any:
    value = _env(name)
    if value is None:
        return fallback
    return cast(value)


def advertised_urls(ip: str, port: int) -> list[str]:
    """The addresses other devices can use to reach the peer listener."""
    if ip not in ("0.0.0.0", "::", ""):
        host = f"[{ip}]" if ":" in ip else ip
        return [f"https://{host}:{port}"]
    urls = []
    for _name, addrs in sorted(psutil.net_if_addrs().items()):
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                urls.append(f"https://{addr.address}:{port}")
    return urls or [f"https://127.0.0.1:{port}"]


class ParallalxApp(ExtensionApp):
    """Device identity, pairing requests and (in later layers) the cluster, inside Jupyter."""

    name = "parallalx_jupyter"
    extension_url = "/parallalx/api/device"
    load_other_extensions = True
    version = __version__

    home = Unicode(help="State directory (keys, database). Env: PARALLALX_HOME.").tag(config=True)
    device_name = Unicode(help="Name shown to other devices. Env: PARALLALX_DEVICE_NAME.").tag(
        config=True
    )
    peer_ip = Unicode(
        help="Interface of the peer listener (pairing only). 0.0.0.0 = every interface; "
        "127.0.0.1 = this machine only. Env: PARALLALX_PEER_IP."
    ).tag(config=True)
    peer_port = Int(help="Peer listener port; 0 picks a free one. Env: PARALLALX_PEER_PORT.").tag(
        config=True
    )
    request_ttl = Float(help="Seconds a connection request stays open. Env: PARALLALX_REQUEST_TTL."
                        ).tag(config=True)
    clock_skew = Float(help="Allowed clock difference between devices, seconds.").tag(config=True)
    max_pending = Int(help="Most open incoming requests in total.").tag(config=True)
    max_pending_per_ip = Int(help="Most open incoming requests from one address.").tag(config=True)
    peer_rate = Float(help="Peer listener requests per second allowed per address.").tag(
        config=True
    )
    peer_burst = Int(help="Burst size for peer_rate.").tag(config=True)
    peer_global_rate = Float(help="Peer listener requests per second in total.").tag(config=True)
    poll_interval = Float(help="Seconds between polls for outcomes of sent requests.").tag(
        config=True
    )
    scheduler_ip = Unicode(
        help="Interface the Dask scheduler binds when this is a main device (default: peer_ip). "
        "Env: PARALLALX_SCHEDULER_IP."
    ).tag(config=True)
    scheduler_port = Int(help="Dask scheduler port; 0 picks one once and keeps it. "
                         "Env: PARALLALX_SCHEDULER_PORT.").tag(config=True)
    job_stale_after = Float(
        help="Seconds without a report after which a running job is shown as lost (its kernel "
        "died or its machine slept). Env: PARALLALX_JOB_STALE_AFTER."
    ).tag(config=True)

    @default("home")
    def _home(self) -> str:
        return _env_default("home", str, str(Path(jupyter_data_dir()) / "parallalx"))

    @default("device_name")
    def _device_name(self) -> str:
        return _env_default("device_name", str, socket.gethostname())

    @default("peer_ip")
    def _peer_ip(self) -> str:
        return _env_default("peer_ip", str, "0.0.0.0")

    @default("peer_port")
    def _peer_port(self) -> int:
        return _env_default("peer_port", int, 8476)

    @default("request_ttl")
    def _request_ttl(self) -> float:
        return _env_default("request_ttl", float, 600.0)

    @default("clock_skew")
    def _clock_skew(self) -> float:
        return _env_default("clock_skew", float, 300.0)

    @default("max_pending")
    def _max_pending(self) -> int:
        return _env_default("max_pending", int, 50)

    @default("max_pending_per_ip")
    def _max_pending_per_ip(self) -> int:
        return _env_default("max_pending_per_ip", int, 5)

    @default("peer_rate")
    def _peer_rate(self) -> float:
        return _env_default("peer_rate", float, 5.0)

    @default("peer_burst")
    def _peer_burst(self) -> int:
        return _env_default("peer_burst", int, 20)

    @default("peer_global_rate")
    def _peer_global_rate(self) -> float:
        return _env_default("peer_global_rate", float, 200.0)

    @default("poll_interval")
    def _poll_interval(self) -> float:
        return _env_default("poll_interval", float, 2.0)

    @default("scheduler_ip")
    def _scheduler_ip(self) -> str:
        return _env_default("scheduler_ip", str, self.peer_ip)

    @default("scheduler_port")
    def _scheduler_port(self) -> int:
        return _env_default("scheduler_port", int, 0)

    @default("job_stale_after")
    def _job_stale_after(self) -> float:
        return _env_default("job_stale_after", float, 30.0)

    # ------------------------------------------------------------------ lifecycle

    manager: DeviceManager | None = None
    listener: PeerListener | None = None
    store: Store | None = None

    def initialize_settings(self) -> None:
        home = Path(self.home).expanduser()
        identity = DeviceIdentity.load_or_create(home)
        self.store = Store(home / "parallalx.sqlite3")
        logger = self.serverapp.event_logger
        for schema in events.SCHEMAS.values():
            logger.register_event_schema(schema)

        def emit(name: str, data: dict[str, Any]) -> None:
            logger.emit(schema_id=events.schema_id(name), data=data)

        settings = PairingSettings(
            device_name=self.device_name,
            request_ttl=self.request_ttl,
            clock_skew=self.clock_skew,
            max_pending=self.max_pending,
            max_pending_per_ip=self.max_pending_per_ip,
            poll_interval=self.poll_interval,
        )
        self.manager = DeviceManager(identity, self.store, settings, emit)
        self.environments = EnvironmentService(emit, Path(self.serverapp.root_dir))
        self.manager.resolve_python = self.environments.resolve_python
        self.manager.cluster = ClusterService(
            home, identity.device_id, emit, scheduler_ip=self.scheduler_ip,
            scheduler_port=self.scheduler_port,
            prepare_env=self.environments.prepare_for_main,
        )
        self.listener = PeerListener(
            self.manager, self.peer_ip, self.peer_port, str(identity.cert_path),
            str(identity.key_path), rate=self.peer_rate, burst=self.peer_burst,
            global_rate=self.peer_global_rate,
        )
        self.listener.start()
        settings.peer_port = self.listener.port
        self.manager.peer_urls = advertised_urls(self.peer_ip, self.listener.port)
        self.manager.start()
        self.log.info(
            "parallalx device %s (%s), peer listener on %s:%s",
            identity.display_id, self.device_name, self.peer_ip, self.listener.port,
        )
        self.jobs = JobRegistry(self.store, emit, stale_after=self.job_stale_after)
        self.spawner = JobSpawner(self.jobs, home)
        self.settings.update({"parallalx_manager": self.manager, "parallalx_app": self,
                              "parallalx_environments": self.environments,
                              "parallalx_jobs": self.jobs,
                              "parallalx_spawner": self.spawner})

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Write where this device's Jupyter server listens, for the CLI (mode 0600: it holds
        the token)."""
        home = Path(self.home).expanduser()
        info = {
            "url": serverapp.connection_url,
            "token": serverapp.identity_provider.token,
            "pid": os.getpid(),
            "peer_port": self.listener.port if self.listener else None,
        }
        write_private(home / SERVER_INFO_FILE, json.dumps(info))
        self.spawner.server_url = info["url"]
        self.spawner.token = info["token"]

    async def stop_extension(self) -> None:
        if getattr(self, "spawner", None) is not None:
            await self.spawner.stop()
        if self.manager is not None:
            await self.manager.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.store is not None:
            self.store.close()
            self.store = None
        path = Path(self.home).expanduser() / SERVER_INFO_FILE
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
