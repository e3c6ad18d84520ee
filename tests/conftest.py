"""Shared fixtures: devices on 127.0.0.1, as real processes (Jupyter servers with parallalx) or
in this process (`InProcessDevice`); and the two tiers of the suite.

Tiers: a test is `e2e` when it needs real Jupyter server processes, Dask clusters (a
LocalCluster too), network namespaces or Chromium. `pytest_collection_modifyitems` marks every
test that uses a fixture of E2E_FIXTURES (directly or through another fixture); a test that
starts such things itself carries `@pytest.mark.e2e`. `pytest -m "not e2e"` is the fast tier,
and a fast test that starts a device process anyway fails and says to mark it (`_tier_guard`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inprocess_device import InProcessDevice

from parallalx_jupyter.local_device import LocalDevice

pytest_plugins = ["pytest_jupyter.jupyter_server"]

#: The suite's devices do not start the main device's own worker (`main_device_trains`): it
#: costs a worker process (~3 s here) in every test whose device starts a cluster, and most tests
#: are about the paired devices. A test of that default clears the variable for its device,
#: `make_device(..., env={MAIN_DEVICE_TRAINS: ""})` (empty: the table's default).
MAIN_DEVICE_TRAINS = "PARALLALX_MAIN_DEVICE_TRAINS"


#: The suite's devices do not announce themselves on the network (`discoverable`): devices of
#: tests running side by side on one host would otherwise list each other. The discovery tests
#: turn it on for their devices (`make_device(..., discoverable=True)`).
DISCOVERABLE = "PARALLALX_DISCOVERABLE"

#: The suite's workers do not start their rank forkserver (and import torch in it) as soon as
#: they join: most tests never train, and on two cores those imports slow every other test. The
#: first job's probe starts it; tests of the prestart turn it on (`PRESTART_RANKS`, "1").
PRESTART_RANKS = "PARALLALX_PRESTART_RANKS"


@pytest.fixture(scope="session", autouse=True)
def _main_device_trains_off() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(MAIN_DEVICE_TRAINS, "0")
        patch.setenv(DISCOVERABLE, "0")
        patch.setenv(PRESTART_RANKS, "0")
        yield


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


@pytest.fixture
def make_inprocess_device(tmp_path: Path) -> Iterator[Callable[..., InProcessDevice]]:
    """Start devices in this process (identity, store, DeviceManager, the real peer listener;
    no Jupyter server, no cluster): `make("alpha", request_ttl=2.0)`; stopped at teardown."""
    started: list[InProcessDevice] = []

    def make(name: str, **settings: Any) -> InProcessDevice:
        dev = InProcessDevice(home=tmp_path / name, name=name, settings=settings)
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


# Fixtures that start real Jupyter servers, Dask clusters, network namespaces or Chromium, by
# name (fixtures of the same name in several folders are all such). A test using one of them,
# directly or through another fixture, is e2e.
E2E_FIXTURES = frozenset({
    # real device processes (Jupyter servers)
    "make_device", "devices", "shared_device", "peers", "lab",
    # Dask clusters: parallalx's TLS clusters, and plain LocalClusters
    "harness", "hardened", "cluster2", "cluster3", "cluster_factory",
    "local_cluster", "dask_client", "plain_cluster",
    # network namespaces
    "hosts",
    # Chromium
    "browser",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the e2e tier (E2E_FIXTURES); then sort the browser tests last, whatever folders sort
    after tests/ui: Playwright's sync API leaves an event loop running in this process, and a
    later test whose fixtures close an event loop would then fail in teardown ("Cannot close a
    running event loop")."""
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)
    ui = Path(__file__).parent / "ui"
    items.sort(key=lambda item: Path(str(item.path)).is_relative_to(ui))


@pytest.fixture(autouse=True)
def _tier_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside the e2e tier may not start a device process: it would make the fast tier
    slow without saying so. Mark the test e2e, or use an in-process device."""
    if request.node.get_closest_marker("e2e") is not None:
        return

    def refuse(self: LocalDevice, *args: Any, **kwargs: Any) -> LocalDevice:
        raise AssertionError(
            f"{request.node.nodeid} starts a device process ({self.name}) but is not marked "
            "e2e: add @pytest.mark.e2e (tests/conftest.py says when), or use "
            "make_inprocess_device"
        )

    monkeypatch.setattr(LocalDevice, "start", refuse)
