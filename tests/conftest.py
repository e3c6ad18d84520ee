"""Shared fixtures: real device processes (Jupyter servers with parallalx) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parallalx_jupyter.local_device import LocalDevice

pytest_plugins = ["pytest_jupyter.jupyter_server"]


@pytest.fixture
def make_device(tmp_path: Path) -> Iterator[Callable[..., LocalDevice]]:
    """Start devices as separate `jupyter server` processes; all are stopped at teardown."""
    started: list[LocalDevice] = []

    def make(name: str, env: dict[str, str] | None = None, **config: Any) -> LocalDevice:
        dev = LocalDevice(home=tmp_path / name, name=name, extra_config=config, env=env or {})
        started.append(dev)
        return dev.start()

    yield make
    for dev in started:
        dev.stop()



EXAMPLE_WORKLOAD = Path(__file__).parents[1] / "docs" / "examples" / "parallalx-example-workload"


@pytest.fixture(scope="session")
def example_workload(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """docs/examples/parallalx-example-workload, pip-installed into a folder of its own that
    this process (sys.path) and every process started afterwards (PYTHONPATH) can see: a real
    install, found through its entry point, without touching the test environment."""
    import importlib
    import os
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("example-workload")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(EXAMPLE_WORKLOAD)],
        check=True, capture_output=True,
    )
    sys.path.insert(0, str(target))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(target), *([old] if old else [])])
    importlib.invalidate_caches()
    yield target
    sys.path.remove(str(target))
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests run last, whatever folders sort after tests/ui: Playwright's sync API
    leaves an event loop running in this process, and a later test whose fixtures close an
    event loop would then fail in teardown ("Cannot close a running event loop")."""
    ui = Path(__file__).parent / "ui"
    items.sort(key=lambda item: Path(str(item.path)).is_relative_to(ui))
