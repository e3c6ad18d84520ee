"""Start a whole device (a Jupyter server with parallalx) as a subprocess on this machine.

The demo and the multi-device tests use this so that every device is a real, separate process
with its own state directory, Jupyter config/data/runtime dirs and ports on 127.0.0.1: nothing
is shared but the host.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import ApiClient, ClientError

#: what a kernel's server sets for it; a device started from that kernel is another device
INHERITED_SERVER_VARS = frozenset({"PARALLALX_HOME", "PARALLALX_URL", "PARALLALX_TOKEN"})


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; TimeoutError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        time.sleep(interval)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class DeviceError(Exception):
    """A local device process failed to start or an API call to it failed."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class LocalDevice:
    """One device: `start()` launches `jupyter server`, `api()` calls its REST API.

    `app="lab"` starts `jupyter lab` instead (the browser tests need the frontend), with
    JupyterLab's news and update checks off; `base_url` serves everything under a prefix
    (e.g. `/user/someone/`, as JupyterHub does); `server_config` adds `ServerApp` traits.
    """

    home: Path
    name: str
    port: int = 0
    peer_port: int = 0
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    extra_config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    app: str = "server"
    base_url: str = "/"
    server_config: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Origin plus base_url, without a trailing slash (`http://127.0.0.1:PORT` by default)."""
        prefix = "/" + self.base_url.strip("/") if self.base_url.strip("/") else ""
        return f"http://127.0.0.1:{self.port}{prefix}"

    @property
    def peer_url(self) -> str:
        return f"https://127.0.0.1:{self.peer_port}"

    @property
    def log_path(self) -> Path:
        return self.home / "server.log"

    def _write_config(self) -> None:
        config_dir = self.home / "jupyter-config"
        config_dir.mkdir(parents=True, exist_ok=True)
        parallalx = {
            "home": str(self.home / "state"),
            "device_name": self.name,
            "peer_ip": "127.0.0.1",
            "peer_port": self.peer_port,
            "poll_interval": 0.5,
            **self.extra_config,
        }
        server: dict[str, Any] = {
            "jpserver_extensions": {"parallalx_jupyter": True},
            "ip": "127.0.0.1",
            "port": self.port,
            "port_retries": 0,
            "open_browser": False,
            "root_dir": str(self.home),
            "allow_root": True,
        }
        if self.base_url.strip("/"):
            server["base_url"] = "/" + self.base_url.strip("/") + "/"
        server.update(self.server_config)
        config: dict[str, Any] = {
            "ServerApp": server,
            "IdentityProvider": {"token": self.token},
            "ParallalxApp": parallalx,
        }
        if self.app == "lab":
            config["LabApp"] = {
                "news_url": None,
                "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
            }
            # no "get notified about Jupyter news?" prompt on a fresh profile
            settings = config_dir / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
            settings.mkdir(parents=True, exist_ok=True)
            notification = settings / "notification.jupyterlab-settings"
            if not notification.exists():
                notification.write_text(
                    json.dumps({"fetchNews": "false", "checkForUpdates": False})
                )
        (config_dir / "jupyter_server_config.json").write_text(json.dumps(config, indent=1))

    def start(self, timeout: float = 60.0) -> LocalDevice:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        self.peer_port = self.peer_port or free_port()
        self._write_config()
        env = {
            # not the variables that name another device's server: a demo or test run from
            # a notebook inherits its kernel's (`app.pass_env_to_kernels`)
            **{k: v for k, v in os.environ.items() if k not in INHERITED_SERVER_VARS},
            "JUPYTER_CONFIG_DIR": str(self.home / "jupyter-config"),
            "JUPYTER_DATA_DIR": str(self.home / "jupyter-data"),
            "JUPYTER_RUNTIME_DIR": str(self.home / "jupyter-runtime"),
            "JUPYTER_PLATFORM_DIRS": "0",
            "PYTHONUNBUFFERED": "1",
            **self.env,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        if self.app not in ("server", "lab"):
            raise ValueError(f"app must be 'server' or 'lab', not {self.app!r}")
        module = "jupyterlab" if self.app == "lab" else "jupyter_server"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DeviceError(f"device {self.name} exited: {self.tail_log()}")
            try:
                self.api("GET", "device")
                return
            except (DeviceError, OSError):
                time.sleep(0.2)
        raise DeviceError(f"device {self.name} did not start in {timeout} s: {self.tail_log()}")

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def api(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """`method` on this device's REST API (`client.ApiClient`); DeviceError on failure."""
        try:
            return ApiClient(self.url, self.token, timeout).call(method, path, body)
        except ClientError as err:
            status = "" if err.status is None else f"{err.status} "
            raise DeviceError(f"{method} {path}: {status}{err.message}", err.status) from None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the server and everything it started: the crash a user's laptop can have."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
