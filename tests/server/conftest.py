"""Fixtures for the local REST API tests: an in-process Jupyter server with parallalx (through
pytest-jupyter) and, where a second device is needed, an in-process device (`sender`).

pytest-jupyter's plugin is registered in the top-level tests/conftest.py (`pytest_plugins` is
only allowed in a rootdir/initial conftest). Its autouse `jp_server_cleanup` fixture runs
`ServerApp._cleanup()` at teardown, which calls `ParallalxApp.stop_extension()`; the
`pytest_runtest_teardown` wrapper below checks after every test here that uses that server that
this really left no store thread behind (test_local_api.py::test_cleanup_stops_the_extension
also checks that the peer listener's sockets are closed).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inprocess_device import InProcessDevice

from parallalx_jupyter import profile
from parallalx_jupyter.local_device import free_port

STORE_THREAD = "parallalx-store"
_threads_before = pytest.StashKey[set[threading.Thread]]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_threads_before] = set(threading.enumerate())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After all fixtures of a test are torn down (pytest-jupyter's cleanup included), no
    parallalx store thread this test started may remain: a leak here means stop_extension did
    not run or did not finish."""
    result = yield
    if "jp_serverapp" not in getattr(item, "fixturenames", ()):
        return result  # no extension to stop (an in-process device's store is its fixture's)
    before = item.stash.get(_threads_before, set())
    leaked = [
        t.name for t in threading.enumerate()
        if t not in before and t.name.startswith(STORE_THREAD)
    ]
    if leaked:
        raise AssertionError(f"{item.nodeid} leaked threads after teardown: {leaked}")
    return result


@pytest.fixture
def jp_asyncio_loop(_function_scoped_runner: Any) -> Iterator[asyncio.AbstractEventLoop]:
    """Run pytest-jupyter's server on the loop pytest-asyncio runs the async tests on.

    The project runs pytest-asyncio in auto mode, so `async def` tests execute in its runner's
    loop; pytest-jupyter would otherwise build the server, its HTTP client and the extension on
    a second loop that never runs while the test awaits, and every `jp_fetch` would hang. The
    runner (a pytest-asyncio 1.x fixture) closes the loop itself, after pytest-jupyter's
    `jp_server_cleanup` has used it to stop the server and the extension."""
    loop = _function_scoped_runner.get_loop()
    asyncio.set_event_loop(loop)
    yield loop


@pytest.fixture(autouse=True)
def _no_torch_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-process device would probe torch in a subprocess at start (seconds of CPU per
    server, one server per test); the API tests only need the probe's JSON shape."""

    async def probe(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"torch": None, "cuda": [], "mps": False, "error": "probe disabled in tests"}

    monkeypatch.setattr(profile, "accelerator_profile", probe)


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    """Extra config merged into jp_server_config; parametrize this name directly to change it
    for one test, e.g. `@pytest.mark.parametrize("server_overrides", [{...}])`."""
    return {}


@pytest.fixture
def parallalx_home(tmp_path: Path) -> Path:
    return tmp_path / "parallalx-home"


@pytest.fixture
def jp_server_config(parallalx_home: Path, server_overrides: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {
        "ServerApp": {
            "jpserver_extensions": {"parallalx_jupyter": True},
            "allow_unauthenticated_access": False,
        },
        "ParallalxApp": {
            "home": str(parallalx_home),
            "peer_ip": "127.0.0.1",
            "peer_port": 0,
            "device_name": "test-device",
            "poll_interval": 0.2,
        },
    }
    for section, values in server_overrides.items():
        config.setdefault(section, {}).update(values)
    return config


@pytest.fixture
def parallalx_app(jp_serverapp: Any) -> Any:
    """The live ParallalxApp inside the in-process Jupyter server."""
    return jp_serverapp.web_app.settings["parallalx_app"]


@pytest.fixture
def peer_url(parallalx_app: Any) -> str:
    """The in-process device's peer listener, for devices that send it requests."""
    return f"https://127.0.0.1:{parallalx_app.listener.port}"


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, read, released)."""
    return free_port()


@pytest.fixture
def sender(make_inprocess_device: Callable[..., InProcessDevice]) -> InProcessDevice:
    """A second device, in this process: its DeviceManager and real peer listener on a loop in
    a thread of its own (tests/inprocess_device.py), not a Jupyter server.

    Its API is blocking, so async tests call it through `call_sender`, which keeps the
    in-process server's event loop free to answer the sender's peer calls."""
    return make_inprocess_device("sender")


@pytest.fixture
def call_sender(sender: InProcessDevice) -> Callable[..., Any]:
    async def call(method: str, path: str, body: Any = None) -> Any:
        return await asyncio.to_thread(sender.api, method, path, body)

    return call
