"""ParallalxApp: the Jupyter server extension that gives a device its identity and peer listener.

The configurable traits, their types, defaults and help are the table `settings.SETTINGS`.
Each trait can also be set with an environment variable `PARALLALX_<TRAIT>` (e.g.
`PARALLALX_PEER_PORT=8477`), which is what lets several devices run side by side on one host:
give each its own `home` and ports. Config files and the command line still win over the
environment.

A home belongs to one running server at a time (`claim_home`): a second server on the same home
goes on without parallalx and says so in one log line; a home that cannot be used at all stops
the server with one line. `ParallalxApp._load_jupyter_server_extension` says why each.
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Int, Unicode, default

from ._version import __version__
from .cluster.service import ClusterService
from .devices import DeviceManager, PairingSettings
from .discovery import Discovery
from .environments.service import EnvironmentService
from .files import FileLock, LockHeld, read_lock_info, write_private
from .identity import DeviceIdentity
from .server import events
from .server.handlers import handlers
from .server.job_registry import JobRegistry
from .server.job_spawner import JobSpawner
from .server.peer import PeerListener
from .settings import SETTINGS, Computed, resolve
from .store import Store

SERVER_INFO_FILE = "server.json"
LOCK_FILE = ".lock"
HOME_HELP = "c.ParallalxApp.home or PARALLALX_HOME"


class HomeInUse(Exception):
    """Another live Jupyter server holds this home (its lock): this one must not run a second
    copy of the same device, nor touch its files."""


class HomeUnusable(Exception):
    """The home cannot be created, locked or written (a path under a regular file, a read-only
    directory or filesystem, another user's directory)."""


def _why_unusable(home: Path, err: OSError) -> str:
    """The reason in words, naming the path component to blame where the kernel's message
    alone ("Not a directory") would leave the user guessing which one."""
    for parent in (home, *home.parents):
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is a file, not a directory"
            break
    where = f" ({err.filename})" if err.filename and Path(err.filename) != home else ""
    return f"{err.strerror or err}{where}"


def _holder_description(home: Path, wait: float = 2.0) -> str:
    """"PID n, port p" of the server holding `home`, from what it wrote into the lock file.
    A server that has only just taken the lock writes its PID at once and its port once it
    listens, so wait a little for those before saying what is known."""
    deadline = time.monotonic() + wait
    while True:
        info = read_lock_info(home / LOCK_FILE)
        if (info.get("pid") and info.get("port")) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    pid = info.get("pid") or "unknown"
    port = info.get("port") or "not known yet: it is still starting"
    return f"PID {pid}, port {port}"


def claim_home(home: Path) -> FileLock:
    """Create `home` if needed, take its lock for this process's lifetime, and check that files
    can be created in it: `HomeInUse` or `HomeUnusable`, each with the one line to show.

    The lock (`files.FileLock`, an flock on `<home>/.lock`) is what keeps a second server from
    running the same device next to the first: two peer listeners with one identity, and the
    second overwriting, then deleting on exit, the first one's `server.json`. The kernel drops
    it when this process dies, so a crashed server never blocks the next start."""
    try:
        home.mkdir(parents=True, exist_ok=True)
        lock = FileLock.acquire(home / LOCK_FILE)
    except LockHeld:
        raise HomeInUse(
            f"parallalx home {home} is in use by another Jupyter server "
            f"({_holder_description(home)}): parallalx is not started in this server, which "
            f"goes on without it. Use that server, or give this one its own home ({HOME_HELP})."
        ) from None
    except OSError as err:
        raise HomeUnusable(_unusable_line(home, err)) from None
    try:
        lock.describe({"pid": os.getpid()})
        fd, probe = tempfile.mkstemp(dir=home, prefix=".probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        lock.release()
        raise HomeUnusable(_unusable_line(home, err)) from None
    return lock


def _unusable_line(home: Path, err: OSError) -> str:
    return (
        f"parallalx home {home} cannot be used: {_why_unusable(home, err)}. This server stops; "
        f"set {HOME_HELP} to a directory this user can write."
    )


_TRAIT_TYPES = {str: Unicode, int: Int, float: Float, bool: Bool}


def _setting_traits() -> dict[str, Any]:
    """One configurable trait per row of `settings.SETTINGS`, each with a `@default` that reads
    PARALLALX_<NAME> before the table's default (so config files and the command line, which
    set the trait itself, still win over the environment)."""
    out: dict[str, Any] = {}
    for row in SETTINGS:
        computed = isinstance(row.default, Computed)
        shown = f" Default: {row.default.shown}." if computed else ""
        static = {} if computed else {"default_value": row.default}  # what --help-all shows
        out[row.name] = _TRAIT_TYPES[row.type](
            help=f"{row.help}{shown} Env: {row.env}.", **static
        ).tag(config=True)
        out[f"_{row.name}_from_env"] = default(row.name)(_from_env_or_table(row.name))
    return out


def _from_env_or_table(name: str) -> Any:
    def value(self: Any) -> Any:
        return resolve(name, lambda other: getattr(self, other))

    value.__name__ = f"_{name}_from_env"
    return value


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


def pass_env_to_kernels(kernel_manager: Any, env: dict[str, str]) -> Any:
    """Make every kernel `kernel_manager` starts from now on (REST `POST api/kernels`, a
    notebook's session, a restart, which reuses the launch's env) get `env` on top of the
    environment it would have had; returns the function that undoes it.

    Why: a kernel must find *its* device, whatever that server's `home` (set in a config file
    only, the server's own environment knows nothing of it), base URL or port. Without this,
    `px.train` in a notebook looked for the cluster under the default home and said "no
    cluster has been started on this device" next to a panel showing the running scheduler.
    With it, `PARALLALX_HOME` (the cluster dir, server.json) and `PARALLALX_URL` /
    `PARALLALX_TOKEN` (the REST API; a `!parallalx ...` in a cell too) name this server.

    jupyter_server has no per-kernel env hook: its sessions pass `env=` (os.environ plus
    `JPY_SESSION_NAME`) to `start_kernel`, its kernels handler passes none (the provisioner
    then copies os.environ), so wrapping this instance's `start_kernel` covers both without
    changing os.environ, which other devices in the same process (tests) would share. The
    env's values are never logged (jupyter_server logs only the keys).
    """
    original = kernel_manager.start_kernel
    own = "start_kernel" in vars(kernel_manager)  # wrapped already by someone else

    async def start_kernel(*args: Any, **kwargs: Any) -> Any:
        given = kwargs.get("env")
        kwargs["env"] = {**(given if given is not None else os.environ), **env}
        started = original(*args, **kwargs)
        return await started if inspect.isawaitable(started) else started

    kernel_manager.start_kernel = start_kernel

    def restore() -> None:
        if vars(kernel_manager).get("start_kernel") is start_kernel:
            if own:
                kernel_manager.start_kernel = original
            else:
                del kernel_manager.start_kernel  # the class's method again

    return restore


class ParallalxApp(ExtensionApp):
    """Device identity, pairing requests and (in later layers) the cluster, inside Jupyter.

    The server that loads this extension owns its `home` for its lifetime (`claim_home`)."""

    name = "parallalx_jupyter"
    extension_url = "/parallalx/api/device"
    load_other_extensions = True
    version = __version__

    # home, device_name, peer_ip, peer_port, request_ttl, reveal_window, clock_skew,
    # max_pending, max_pending_per_ip, peer_rate, peer_burst, peer_global_rate, poll_interval,
    # scheduler_ip, scheduler_port, main_device_trains, discoverable, job_stale_after: one
    # trait per row of `settings.SETTINGS` (name, type, default, help), defaulting to
    # PARALLALX_<NAME>, else the table's default
    locals().update(_setting_traits())

    # ------------------------------------------------------------------ lifecycle

    manager: DeviceManager | None = None
    listener: PeerListener | None = None
    store: Store | None = None
    discovery: Discovery | None = None

    home_lock: FileLock | None = None

    @classmethod
    def _load_jupyter_server_extension(cls, serverapp: Any) -> Any:
        """Load as usual, except for the two ways the home can stop parallalx, each reported in
        one line (jupyter_server would log a warning with a traceback and go on):

        - Home in use by another server (`HomeInUse`): one ERROR line naming the home and the
          other server's PID and port; this server goes on without parallalx. The extension is
          enabled for every Jupyter server this Python runs (jupyter-config), so a second
          `jupyter lab` for other work on the default home is ordinary use, and the device is
          alive in the other server (which the CLI and kernels find through its server.json);
          stopping the whole server would make installing parallalx break plain Jupyter.
          (jupyter_server then logs its generic "extension was successfully loaded" line: this
          loader returned normally, but no handler or setting of parallalx was added.)
        - Home unusable (`HomeUnusable`): one CRITICAL line naming the path, and the server
          exits with status 1, as jupyter_server itself does for a port it cannot use. This is
          a configuration error with no device anywhere: a server that runs on without it
          looks like a device to its user while no peer can reach it.
        """
        try:
            return super()._load_jupyter_server_extension(serverapp)
        except HomeInUse as err:
            cls._home_log(serverapp).error("%s", err)
            return None
        except HomeUnusable as err:
            cls._home_log(serverapp).critical("%s", err)
            serverapp.exit(1)

    @classmethod
    def _home_log(cls, serverapp: Any) -> Any:
        point = serverapp.extension_manager.extension_points.get(cls.name)
        app = getattr(point, "app", None)
        return app.log if app is not None else serverapp.log

    def initialize_settings(self) -> None:
        home = Path(self.home).expanduser()
        self.home_lock = claim_home(home)
        try:
            self._initialize_device(home)
        except BaseException:
            # This server has no device after all: let the next one have the home, unless the
            # peer listener is already serving this identity (it would then run twice).
            if self.listener is None:
                if self.store is not None:
                    self.store.close()
                    self.store = None
                self.home_lock.release()
                self.home_lock = None
            raise

    def _initialize_device(self, home: Path) -> None:
        try:
            identity = DeviceIdentity.load_or_create(home)
        except OSError as err:
            raise HomeUnusable(_unusable_line(home, err)) from None
        self.store = Store(home / "parallalx.sqlite3")
        logger = self.serverapp.event_logger
        for schema in events.SCHEMAS.values():
            logger.register_event_schema(schema)

        def emit(name: str, data: dict[str, Any]) -> None:
            logger.emit(schema_id=events.schema_id(name), data=data)

        settings = PairingSettings(
            device_name=self.device_name,
            request_ttl=self.request_ttl,
            reveal_window=self.reveal_window,
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
            main_device_trains=self.main_device_trains,
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
        self.discovery = Discovery(
            device_id=identity.device_id, device_name=self.device_name, peer_ip=self.peer_ip,
            peer_port=self.listener.port, announce=self.discoverable, log=self.log,
        )
        self.jobs = JobRegistry(self.store, emit, stale_after=self.job_stale_after)
        self.spawner = JobSpawner(self.jobs, home)
        self.settings.update({"parallalx_manager": self.manager, "parallalx_app": self,
                              "parallalx_environments": self.environments,
                              "parallalx_jobs": self.jobs,
                              "parallalx_discovery": self.discovery,
                              "parallalx_spawner": self.spawner})

    def initialize_handlers(self) -> None:
        self.handlers.extend(handlers())

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        """Write where this device's Jupyter server listens, for the CLI (mode 0600: it holds
        the token), and the PID and port into the home's lock for a refused second server.
        Nothing to do where the home was refused: server.json belongs to its holder."""
        if self.home_lock is None:
            return
        self.home_lock.describe({"pid": os.getpid(), "port": serverapp.port,
                                 "url": serverapp.connection_url})
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
        self._restore_kernel_env = pass_env_to_kernels(serverapp.kernel_manager, {
            "PARALLALX_HOME": str(home), "PARALLALX_URL": info["url"],
            "PARALLALX_TOKEN": info["token"] or ""})
        if self.discovery is not None:  # after the listener is up: announce what answers
            await self.discovery.start()

    _restore_kernel_env: Any = None

    async def stop_extension(self) -> None:
        if self._restore_kernel_env is not None:
            self._restore_kernel_env()
            self._restore_kernel_env = None
        if self.discovery is not None:  # first: nearby devices drop this one at once
            await self.discovery.stop()
        if getattr(self, "spawner", None) is not None:
            await self.spawner.stop()
        if self.manager is not None:
            await self.manager.stop()
        if self.listener is not None:
            await self.listener.stop()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self.home_lock is None:
            return  # refused or never loaded: the home and its server.json are not ours
        path = Path(self.home).expanduser() / SERVER_INFO_FILE
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
        # last: the next server may take the home once this one's files are put away
        self.home_lock.release()
        self.home_lock = None
