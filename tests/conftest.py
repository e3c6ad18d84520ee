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

