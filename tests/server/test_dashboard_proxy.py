"""The Dask dashboard through the Jupyter server (`server/dashboard_proxy.py`), against a real
`jupyter server` under a `base_url` running a real scheduler with bokeh's dashboard."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from parallalx_jupyter.local_device import LocalDevice

pytest.importorskip("bokeh")


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDevice]:
    dev = LocalDevice(
        home=Path(tmp_path_factory.mktemp("dash")), name="dash-main", base_url="/user/someone/",
        extra_config={"main_device_trains": False},
    )
    dev.start(timeout=90)
    yield dev
    dev.stop()


def get(dev: LocalDevice, path: str, token: str | None = "") -> tuple[int, dict[str, str], bytes]:
    headers = {} if token is None else {"Authorization": f"token {token or dev.token}"}
    request = urllib.request.Request(f"{dev.url}/parallalx/dashboard/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def error_of(status: int, headers: dict[str, str], body: bytes, expected: int) -> str:
    assert status == expected, (status, body[:300])
    assert headers.get("Content-Type", "").startswith("application/json")
    data = json.loads(body)
    assert set(data) == {"error"} and data["error"]
    return data["error"]


def test_dashboard_is_served_through_jupyter_and_only_to_its_users(device: LocalDevice) -> None:
    # before the cluster runs: a clear 503, not a proxy error page
    assert "not running" in error_of(*get(device, "status"), 503)

    state: dict[str, Any] = device.api("POST", "cluster/start", {})
    assert state["running"] and state["dashboard_link"], state
    assert state["dashboard_link"].startswith("http://127.0.0.1:")  # bound to loopback only

    status, headers, body = get(device, "status")
    assert status == 200, body[:300]
    assert headers["Content-Type"].startswith("text/html")
    page = body.decode()
    assert "Bokeh" in page or "bokeh" in page
    # the page's scripts are relative, so they load through the proxy (under base_url) too
    scripts = re.findall(r'src="([^"]+\.js[^"]*)"', page)
    assert scripts, page[:500]
    relative = next(s for s in scripts if not s.startswith(("http:", "https:", "//")))
    assert not relative.startswith("/"), relative
    status, headers, script = get(device, relative)
    assert status == 200 and len(script) > 1000 and "javascript" in headers["Content-Type"]
    # JSON routes of the scheduler's HTTP server pass as well
    status, _, health = get(device, "health")
    assert status == 200 and health == b"ok"

    # no credentials, or wrong ones: refused, as JSON, never proxied
    for token in (None, "not-the-token"):
        assert "authentication" in error_of(*get(device, "status", token=token), 403).lower()
    # a path cannot leave the dashboard or name another host
    for bad in ("../../api/status", "status/../../x", "@127.0.0.1:1/", "http:/x", "a%2F..%2Fb"):
        error_of(*get(device, bad), 400)

    device.api("POST", "cluster/stop", {})
    assert "not running" in error_of(*get(device, "status"), 503)
