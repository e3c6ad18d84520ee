"""Fixtures for the notebook surface: real device processes, a real IPython shell with the
extension loaded, and connections that are closed (threads stopped) after each test."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from parallalx_jupyter.local_device import LocalDevice
from parallalx_jupyter.notebook import api
from parallalx_jupyter.notebook import magics as magics_module

HOSTILE = "<img src=x onerror=alert(1)>\u202egnp.exe\u200b" + "W" * 10_000


@pytest.fixture
def hostile_name() -> str:
    """Markup, a bidi override, a zero-width space and 10k characters."""
    return HOSTILE


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalDevice]]:
    """alpha and bravo, shared by the tests of one module (each test makes its own requests)."""
    root = tmp_path_factory.mktemp("devices")
    started: dict[str, LocalDevice] = {}
    try:
        for name in ("alpha", "bravo"):
            started[name] = LocalDevice(home=root / name, name=name).start()
        yield started
    finally:
        for dev in started.values():
            dev.stop()


@pytest.fixture
def alpha(devices: dict[str, LocalDevice]) -> LocalDevice:
    return devices["alpha"]


@pytest.fixture
def bravo(devices: dict[str, LocalDevice]) -> LocalDevice:
    return devices["bravo"]


@pytest.fixture
def conn_to() -> Iterator[Callable[..., api.Connection]]:
    """`conn_to(device, websocket=True)`: a Connection to that device, closed at teardown."""
    made: list[api.Connection] = []

    def make(dev: LocalDevice, websocket: bool = True) -> api.Connection:
        conn = api.Connection(dev.url, dev.token, "argument", websocket=websocket)
        made.append(conn)
        return conn

    yield make
    for conn in made:
        conn.close()


@pytest.fixture
def ip(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The real (global) IPython shell with `%load_ext parallalx_jupyter` done. `ip.shown`
    lists the objects the magics displayed; `ip.use(device)` points the magics at a device."""
    for key in ("PARALLALX_URL", "PARALLALX_TOKEN", "PARALLALX_HOME"):
        monkeypatch.delenv(key, raising=False)
    start_ipython()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "parallalx_jupyter")
    shown: list[Any] = []
    real_display = magics_module.display

    def record(obj: Any, *args: Any, **kwargs: Any) -> None:
        shown.append(obj)
        real_display(obj, *args, **kwargs)

    monkeypatch.setattr(magics_module, "display", record)
    shell.shown = shown
    shell.use = lambda dev: api.connect(url=dev.url, token=dev.token)
    before = set(shell.user_ns)
    yield shell
    api.disconnect()
    shell.run_line_magic("unload_ext", "parallalx_jupyter")
    for name in set(shell.user_ns) - before:
        shell.user_ns.pop(name, None)
    del shell.shown, shell.use


@pytest.fixture(autouse=True)
def no_parallalx_threads_left() -> Iterator[None]:
    """Every test stops what it started: no event or live thread may outlive it."""
    yield
    api.disconnect()
    for thread in threading.enumerate():
        if thread.name in ("parallalx-events", "parallalx-live"):
            thread.join(6)
    left = [t.name for t in threading.enumerate()
            if t.name in ("parallalx-events", "parallalx-live") and t.is_alive()]
    assert not left, f"threads left running: {left}"


@pytest.fixture
def walk_widgets() -> Callable[[Any], list[Any]]:
    return all_widgets


def all_widgets(root: Any) -> list[Any]:
    """`root` and every widget below it (children, and the widgets views keep as attributes)."""
    import ipywidgets as widgets

    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        w = stack.pop()
        if id(w) in seen:
            continue
        seen[id(w)] = w
        stack.extend(getattr(w, "children", ()) or ())
        for value in vars(w).values():
            if isinstance(value, widgets.Widget):
                stack.append(value)
            elif isinstance(value, dict):
                stack.extend(v for v in value.values() if isinstance(v, widgets.Widget))
    return list(seen.values())
