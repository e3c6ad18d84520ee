"""ParallalxApp: configuration (PARALLALX_* environment variables, config winning over them) and
the home it claims (one server per home; an unusable home stops the server with one line)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from parallalx_jupyter.app import SERVER_INFO_FILE, ParallalxApp, advertised_urls
from parallalx_jupyter.local_device import DeviceError, LocalDevice, wait_for


def test_environment_variables_set_the_traits(monkeypatch, tmp_path):
    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("PARALLALX_DEVICE_NAME", "from-env")
    monkeypatch.setenv("PARALLALX_PEER_PORT", "9123")
    monkeypatch.setenv("PARALLALX_REQUEST_TTL", "42.5")
    monkeypatch.setenv("PARALLALX_SCHEDULER_PORT", "9124")
    app = ParallalxApp()
    assert app.home == str(tmp_path / "h")
    assert app.device_name == "from-env"
    assert (app.peer_port, app.request_ttl, app.scheduler_port) == (9123, 42.5, 9124)
    assert app.scheduler_ip == app.peer_ip == "0.0.0.0"


def test_config_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("PARALLALX_DEVICE_NAME", "from-env")
    monkeypatch.setenv("PARALLALX_PEER_IP", "127.0.0.1")
    app = ParallalxApp(config=Config({"ParallalxApp": {"device_name": "from-config"}}))
    assert app.device_name == "from-config"
    assert app.peer_ip == app.scheduler_ip == "127.0.0.1"


def test_advertised_urls():
    assert advertised_urls("192.168.1.5", 8476) == ["https://192.168.1.5:8476"]
    assert advertised_urls("::1", 1) == ["https://[::1]:1"]
    assert all(u.startswith("https://") for u in advertised_urls("0.0.0.0", 8476))


# ---------------------------------------------------------------- the home: one server, usable

ALREADY_HELD = "is in use by another Jupyter server"


@dataclass
class UnwaitedDevice(LocalDevice):
    """A device whose start does not wait for the parallalx API: for servers that are expected
    to go on without parallalx or to exit, which the tests watch through the process and log."""

    def wait_ready(self, timeout: float = 60.0) -> None:
        return None


def _jupyter_status(dev: LocalDevice) -> int:
    """HTTP status of Jupyter's own /api/status (not parallalx's API); 0 while nothing listens
    yet (the refusal is logged while the server is still starting)."""
    request = urllib.request.Request(f"{dev.url}/api/status")
    request.add_header("Authorization", f"token {dev.token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except urllib.error.URLError as err:
        if isinstance(err.reason, ConnectionRefusedError):
            return 0
        raise


def _log_lines_with(dev: LocalDevice, text: str) -> list[str]:
    try:
        log = dev.log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in log.splitlines() if text in line]


def _refusal(dev: LocalDevice) -> str:
    """Wait for the one line a server writes when another server holds its home."""
    lines = wait_for(lambda: _log_lines_with(dev, ALREADY_HELD), timeout=60, interval=0.2)
    assert len(lines) == 1, lines
    return lines[0]


def _server_info(home: Path) -> dict[str, Any]:
    return json.loads((home / SERVER_INFO_FILE).read_text())


def test_a_second_server_on_one_home_refuses_and_leaves_the_first_alone(make_device, tmp_path):
    home = tmp_path / "shared-home"
    first = make_device("first", home=str(home))
    device_id = first.api("GET", "device")["id"]
    info_before = (home / SERVER_INFO_FILE).read_bytes()

    second = UnwaitedDevice(home=tmp_path / "second", name="second",
                            extra_config={"home": str(home)}).start()
    try:
        line = _refusal(second)
        assert "[E " in line and str(home) in line
        assert f"PID {first.proc.pid}" in line and f"port {first.port}" in line
        # Jupyter itself goes on in the second server, without parallalx
        wait_for(lambda: _jupyter_status(second) == 200, timeout=60, interval=0.2)
        assert second.proc.poll() is None
        with pytest.raises(DeviceError) as err:
            second.api("GET", "device")
        assert err.value.status == 404
        assert "Traceback" not in second.log_path.read_text()
        assert (home / SERVER_INFO_FILE).read_bytes() == info_before
        assert first.api("GET", "device")["id"] == device_id
    finally:
        second.stop()
    # stopping the refused server does not remove or rewrite the first one's server.json
    assert (home / SERVER_INFO_FILE).read_bytes() == info_before
    assert _server_info(home)["pid"] == first.proc.pid
    assert first.api("GET", "device")["id"] == device_id


@pytest.mark.parametrize("end", ["stop", "kill"])
def test_the_home_is_held_for_exactly_the_servers_lifetime(make_device, tmp_path, end):
    """Refused while the first server runs; usable again once it has stopped or was killed
    with SIGKILL (the kernel drops the lock of a dead process: no stale lock to clean up)."""
    home = tmp_path / "shared-home"
    first = make_device("first", home=str(home))
    device_id = first.api("GET", "device")["id"]
    refused = UnwaitedDevice(home=tmp_path / "refused", name="refused",
                             extra_config={"home": str(home)}).start()
    try:
        assert f"PID {first.proc.pid}" in _refusal(refused)
    finally:
        refused.stop()

    first.kill() if end == "kill" else first.stop()
    assert first.proc.returncode is not None

    third = make_device("third", home=str(home))
    assert third.api("GET", "device")["id"] == device_id
    assert _server_info(home)["pid"] == third.proc.pid
    assert _log_lines_with(third, ALREADY_HELD) == []


def _unusable_homes(tmp_path: Path) -> dict[str, Path]:
    regular = tmp_path / "a-file"
    regular.write_text("not a directory")
    return {"under a file": regular / "parallalx", "a file": regular}


@pytest.mark.e2e  # starts a Jupyter server on each home
@pytest.mark.parametrize("kind", ["under a file", "a file", "read-only", "not writable by root"])
def test_an_unusable_home_stops_the_server_with_one_line(tmp_path, kind):
    if kind == "read-only":
        home = tmp_path / "read-only"
        home.mkdir(mode=0o500)
        try:
            (home / "probe").touch()
        except PermissionError:
            pass
        else:  # root (with CAP_DAC_OVERRIDE) writes through the mode bits
            home.chmod(0o700)
            pytest.skip("this user writes into a mode 0500 directory (root); see "
                        "'not writable by root'")
    elif kind == "not writable by root":
        # a directory that exists but where nobody, root included, can create a file
        if not sys.platform.startswith("linux"):
            pytest.skip("uses Linux's /proc")
        home = Path("/proc")
    else:
        home = _unusable_homes(tmp_path)[kind]
    dev = UnwaitedDevice(home=tmp_path / "dev", name="dev", extra_config={"home": str(home)})
    try:
        dev.start()
        dev.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the server went on with an unusable home: {dev.tail_log()}")
    finally:
        dev.stop()
        if kind == "read-only":
            home.chmod(0o700)
    log = dev.log_path.read_text(errors="replace")
    assert dev.proc.returncode not in (0, None), log
    lines = [line for line in log.splitlines() if str(home) in line]
    assert len(lines) == 1, log
    assert lines[0].startswith("[C ") and "cannot be used" in lines[0], lines[0]
    assert "Traceback" not in log
