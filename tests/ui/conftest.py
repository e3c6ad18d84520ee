"""Browser tests of the JupyterLab sidebar: a real `jupyter lab` (LocalDevice(app="lab")) serving
the built extension from this checkout, real peer devices, Debian's Chromium through Playwright.

Skipped (with the reason) only when /usr/bin/chromium is missing: `apt-get install -y chromium`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import (
    ARTIFACTS,
    BUILT_EXTENSION,
    CHROMIUM,
    CHROMIUM_ARGS,
    HOSTILE_NAME,
    LabPage,
)

from parallalx_jupyter.local_device import LocalDevice


def _skip_reason() -> str | None:
    if not CHROMIUM.exists():
        return (
            f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` "
            "(Playwright's own browser download does not work offline)"
        )
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing: `pip install playwright`"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _skip_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def jp_asyncio_loop() -> Iterator[None]:
    """Overrides pytest-jupyter's autouse loop fixtures: these tests are synchronous and
    Playwright's sync API keeps its own event loop running, which those would try to close."""
    yield None


@pytest.fixture(autouse=True)
def jp_server_cleanup() -> Iterator[None]:
    yield None


def _start_all(devices: list[LocalDevice]) -> None:
    """Start devices in parallel threads (each `start()` blocks until its API answers)."""
    errors: list[BaseException] = []

    def run(dev: LocalDevice) -> None:
        try:
            dev.start(timeout=90)
        except BaseException as err:  # noqa: BLE001 - re-raised below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        for dev in devices:
            dev.stop()
        raise errors[0]


def _served_extension(home: Path) -> dict[str, str]:
    """A JUPYTER_PATH whose labextensions/parallalx-jupyter is this checkout's build, so the lab
    under test serves what `jlpm --cwd labextension build` just produced (JUPYTER_PATH comes
    before the user and sys.prefix data dirs, where an editable install may hold a copy)."""
    if not (BUILT_EXTENSION / "package.json").exists() or not (BUILT_EXTENSION / "static").is_dir():
        pytest.fail(
            f"the labextension is not built ({BUILT_EXTENSION} is missing): run "
            "`jlpm --cwd labextension install && jlpm --cwd labextension build`"
        )
    path = home / "jupyter-path"
    (path / "labextensions").mkdir(parents=True, exist_ok=True)
    link = path / "labextensions" / "parallalx-jupyter"
    if not link.exists():
        link.symlink_to(BUILT_EXTENSION, target_is_directory=True)
    return {"JUPYTER_PATH": os.pathsep.join([str(path), os.environ.get("JUPYTER_PATH", "")])}


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalDevice]]:
    """Two plain devices that talk to the lab: a normal one and one with a hostile name."""
    root = tmp_path_factory.mktemp("peers")
    devices = {
        "alice": LocalDevice(home=root / "alice", name="alice-laptop"),
        "hostile": LocalDevice(home=root / "hostile", name=HOSTILE_NAME),
    }
    _start_all(list(devices.values()))
    yield devices
    for dev in devices.values():
        dev.stop()


@pytest.fixture(scope="module", params=["/", "/user/someone/"], ids=["root", "base_url"])
def lab(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    peers: dict[str, LocalDevice],
) -> Iterator[LocalDevice]:
    """`jupyter lab` with parallalx, once at `/` and once under `ServerApp.base_url`."""
    home = tmp_path_factory.mktemp("lab")
    dev = LocalDevice(
        home=home,
        name="main-desktop",
        app="lab",
        base_url=request.param,
        env=_served_extension(home),
    )
    _start_all([dev])
    yield dev
    dev.stop()


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def shared_page(browser: Any, lab: LocalDevice) -> Iterator[LabPage]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        yield LabPage(context.new_page(), lab).open()
    finally:
        context.close()


@pytest.fixture
def lab_page(
    shared_page: LabPage, lab: LocalDevice, request: pytest.FixtureRequest
) -> Iterator[LabPage]:
    """The lab's page, reset for this test; fails the test on any JavaScript dialog (alert from
    injected markup) or uncaught error in the page."""
    variant = "base_url" if lab.base_url.strip("/") else "root"
    shots = ARTIFACTS / variant / re.sub(r"\[.*\]$", "", request.node.name)
    shutil.rmtree(shots, ignore_errors=True)
    shared_page.dialogs.clear()
    shared_page.errors.clear()
    shared_page.start_test(shots)
    yield shared_page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        try:
            shared_page.shot("failure")
        except Exception:  # noqa: BLE001 - best effort
            pass
    assert not shared_page.dialogs, f"a JavaScript dialog opened: {shared_page.dialogs}"
    assert not shared_page.errors, f"uncaught errors in the page: {shared_page.errors}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
