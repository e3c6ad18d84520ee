"""pip installs into a real second environment from a local wheelhouse, with progress events."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from env_helpers import TOY, write_script

from parallalx_jupyter.environments import (
    InstallCancelled,
    Installer,
    InstallError,
    InstallTimeout,
    diff,
    ensure,
    inspect,
    install,
    requirement_set,
)

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout and shell scripts")


def phases(events, package=TOY):
    return [e["phase"] for e in events if e["package"] == package]


async def test_missing_package_is_installed_with_progress(make_venv, wheelhouse):
    python = str(make_venv())
    required = requirement_set([f"{TOY}==1.0"], main_versions={})
    rows = diff(required, await inspect(python, [TOY]))
    assert rows == [{"id": TOY, "name": TOY, "required": "==1.0", "installed": None,
                     "action": "install", "requirement": f"{TOY}==1.0"}]

    events: list[dict] = []
    result = await install(python, rows, on_event=events.append, find_links=[str(wheelhouse)],
                           no_index=True)

    assert phases(events)[0] == "collecting" and "installing" in phases(events)
    assert phases(events)[-1] == "done"
    assert all(set(e) == {"package", "phase", "message"} for e in events)
    assert result.installed == {TOY: "1.0"} and result.diff[0]["action"] == "ok"
    assert await inspect(python, [TOY]) == {TOY: "1.0"}


async def test_version_mismatch_is_detected_then_fixed(make_venv, wheelhouse):
    python = str(make_venv())
    opts = {"find_links": [str(wheelhouse)], "no_index": True}
    # iterate the event stream directly this time
    events = [e async for e in Installer(python, [f"{TOY}==1.0"], **opts).events()]
    assert phases(events)[-1] == "done"

    rows = diff([f"{TOY}==2.0"], await inspect(python, [TOY]))
    assert (rows[0]["installed"], rows[0]["action"]) == ("1.0", "upgrade")
    # ensure() = inspect + diff + install what is pending + verify, in one call
    events.clear()
    final = await ensure(python, [f"{TOY}==2.0"], on_event=events.append, **opts)
    assert [(r["installed"], r["action"]) for r in final] == [("2.0", "ok")]
    assert any("uninstall" in e["message"].lower() for e in events)
    assert phases(events)[-1] == "done"
    assert await inspect(python, [TOY]) == {TOY: "2.0"}
    # and a newer version than required is a mismatch, not an upgrade
    assert diff([f"{TOY}==1.0"], {TOY: "2.0"})[0]["action"] == "mismatch"


async def test_nonexistent_package_fails_with_a_clear_error(make_venv, wheelhouse):
    python = str(make_venv())
    events: list[dict] = []
    with pytest.raises(InstallError) as info:
        await install(python, [f"{TOY}==1.0", "px-does-not-exist==1.0"], on_event=events.append,
                      find_links=[str(wheelhouse)], no_index=True)
    err = info.value
    assert err.packages == ["px-does-not-exist"]
    assert "px-does-not-exist" in str(err) and "No matching distribution" in str(err)
    assert err.pip_error.startswith("ERROR: ")
    assert phases(events, "px-does-not-exist") == ["failed"]
    assert phases(events)[-1] == "failed"  # every requested package ends done or failed
    assert await inspect(python, [TOY]) == {TOY: None}  # pip installs all or nothing


async def test_users_pip_configuration_is_honoured(make_venv, wheelhouse, monkeypatch):
    """No index options are passed: pip's own PIP_* configuration decides where to look."""
    python = str(make_venv())
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    installer = Installer(python, [f"{TOY}==2.0"])
    assert not any("index" in a or "find-links" in a for a in installer.command())
    result = await installer.run()
    assert result.installed == {TOY: "2.0"}


async def test_environment_without_pip_says_so(make_venv):
    python = str(make_venv("bare", system_site=False))
    with pytest.raises(InstallError, match="pip is not available") as info:
        await install(python, [f"{TOY}==1.0"], no_index=True)
    assert info.value.packages == [TOY]


async def test_timeout_and_cancel_stop_pip(tmp_path):
    # stands in for a pip that stalls (e.g. a dead index): a real process that never finishes
    pidfile = tmp_path / "pid"
    stall = write_script(tmp_path / "stall" / "python", f"echo $$ > {pidfile}.tmp\n"
                                                        f"mv {pidfile}.tmp {pidfile}\nsleep 60\n")

    async def started() -> int:
        while not pidfile.exists():
            await asyncio.sleep(0.05)
        pid = int(pidfile.read_text())
        pidfile.unlink()
        return pid

    start = time.monotonic()
    with pytest.raises(InstallTimeout, match="did not finish within 0.5 s"):
        await install(str(stall), ["anything==1"], timeout=0.5)
    assert time.monotonic() - start < 10
    assert not _alive(await started())

    # Installer.cancel(): pip is stopped, the package ends "failed", the run raises
    installer = Installer(str(stall), ["anything==1"])
    events: list[dict] = []
    task = asyncio.ensure_future(installer.run(events.append))
    pid = await started()
    installer.cancel()
    with pytest.raises(InstallCancelled, match="cancelled"):
        await asyncio.wait_for(task, 10)
    assert events == [{"package": "anything", "phase": "failed",
                       "message": "the install was cancelled"}]
    assert not _alive(pid)

    # cancelling the awaiting task stops pip too
    task = asyncio.ensure_future(install(str(stall), ["anything==1"]))
    pid = await started()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a killed child that is not reaped yet is a zombie: gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
