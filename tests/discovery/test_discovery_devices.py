"""Discovery between real device processes on 127.0.0.1: the REST list, `parallalx discover`,
the opt-out, and the printed invite command doing what it says."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from IPython import get_ipython
from IPython.testing.globalipapp import start_ipython

from parallalx_jupyter.local_device import wait_for
from parallalx_jupyter.notebook import api
from parallalx_jupyter.notebook import magics as magics_module
from parallalx_jupyter.notebook.nearby import NearbyTable

OPENAPI = Path(__file__).parents[2] / "parallalx_jupyter" / "openapi.json"

pytestmark = pytest.mark.e2e


def cli(dev, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    return subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "--home", str(dev.home / "state"), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def nearby_ids(dev) -> set[str]:
    return {row["id"] for row in dev.api("GET", "nearby")}


def magic_discover(dev, monkeypatch) -> NearbyTable:
    """`%parallalx discover` in the real IPython shell, pointed at `dev`: what it displays."""
    for key in ("PARALLALX_URL", "PARALLALX_TOKEN", "PARALLALX_HOME"):
        monkeypatch.delenv(key, raising=False)
    start_ipython()
    shell = get_ipython()
    shell.run_line_magic("load_ext", "parallalx_jupyter")
    shown: list = []
    monkeypatch.setattr(magics_module, "display", lambda obj, *a, **k: shown.append(obj))
    api.connect(url=dev.url, token=dev.token)
    try:
        shell.run_line_magic("parallalx", "discover")
    finally:
        api.disconnect()
        shell.run_line_magic("unload_ext", "parallalx_jupyter")
    [table] = [obj for obj in shown if isinstance(obj, NearbyTable)]
    return table


def test_devices_find_each_other_and_the_printed_command_invites(make_device, monkeypatch):
    a = make_device("alpha", discoverable=True)
    b = make_device("bravo", discoverable=True)
    quiet = make_device("quiet", discoverable=False)
    a_id, b_id, quiet_id = (d.api("GET", "device")["id"] for d in (a, b, quiet))

    wait_for(lambda: b_id in nearby_ids(a) and a_id in nearby_ids(b), 30, 0.3)
    wait_for(lambda: {a_id, b_id} <= nearby_ids(quiet), 30, 0.3)  # it lists, unlisted itself
    [row] = [r for r in a.api("GET", "nearby") if r["id"] == b_id]
    assert row["name"] == "bravo" and row["urls"] == [b.peer_url] and row["paired"] is False
    assert a_id not in nearby_ids(a) and quiet_id not in nearby_ids(a) | nearby_ids(b)
    schema = json.loads(OPENAPI.read_text())["components"]["schemas"]["NearbyDevice"]
    jsonschema.validate(a.api("GET", "nearby"), {"type": "array", "items": schema})

    out = cli(a, "discover")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    [i] = [n for n, line in enumerate(lines) if line.startswith("bravo  ")]
    assert row["id_display"][:15] in lines[i] and f"127.0.0.1:{b.peer_port}" in lines[i]
    command = lines[i + 1].strip()
    assert command == f"parallalx invite {b.peer_url}"
    assert "quiet" not in out.stdout and "proves nothing" in out.stdout

    # the command as printed sends a real request; bravo's user still has to accept it
    sent = cli(a, *shlex.split(command)[1:])
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: b.api("GET", "requests?direction=incoming"), 15)
    assert b.api("GET", "devices") == []

    # the magic: a table whose Invite button sends the request (here from the quiet device)
    table = magic_discover(quiet, monkeypatch)
    [row] = [r for r in table.rows if r.device["id"] == b_id]
    assert "%parallalx invite " + b.peer_url in table.text()
    row.invite_button.click()
    assert "must match" in row.outcome.value and row.invite_button.disabled
    from_quiet = wait_for(lambda: [r for r in b.api("GET", "requests?direction=incoming")
                                   if r["peer"]["id"] == quiet_id], 15)
    assert from_quiet[0]["code"] and from_quiet[0]["code"][:3] in row.outcome.value

    # a server that stops says goodbye: it leaves the others' lists at once
    b.stop()
    wait_for(lambda: b_id not in nearby_ids(a), 10, 0.3)
