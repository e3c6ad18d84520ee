"""The environment step inside the real accept -> join flow between two device processes."""

from __future__ import annotations

import json
import time

from env_helpers import TOY, write_kernelspec
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from parallalx_jupyter.local_device import wait_for


def _serving(dev):
    serving = dev.api("GET", "cluster")["serving"]
    return serving[0] if serving else None


def _kernel(dev, venv_python, name="toyenv"):
    kernels = dev.home / "jupyter-data" / "kernels"
    write_kernelspec(kernels, name, [str(venv_python), "-m", "ipykernel_launcher", "-f",
                                     "{connection_file}"])
    return name


async def test_accept_installs_job_requirements_into_the_selected_kernel_then_joins(
    make_device, make_venv, wheelhouse
):
    venv = make_venv("toyenv")
    a = make_device("alpha")
    b = make_device("bravo", env={"PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_INDEX": "1"})
    kernel = _kernel(b, venv)
    listed = {k["name"]: k for k in b.api("GET", "kernels?refresh=true")}
    assert listed[kernel]["selectable"] and listed[kernel]["interpreter"] == str(venv)

    check = b.api("POST", "environment/check", {"kernel": kernel,
                                                "requirements": [f"{TOY}==1.0"]})
    assert [e["name"] for e in check["to_install"]] == [TOY]

    url = b.url.replace("http://", "ws://") + "/api/events/subscribe"
    ws = await websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {b.token}"}))
    sent = a.api("POST", "invitations", {"url": b.peer_url,
                                         "asks": {"requirements": [f"{TOY}==1.0"]}})
    t0 = time.perf_counter()
    b.api("POST", f"requests/{sent['id']}/accept", {"kernel": kernel})
    phases = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        event = json.loads(await ws.read_message())
        if event["schema_id"].endswith("/install-progress/v1") and event["package"] == TOY:
            phases.append(event["phase"])
        if event["schema_id"].endswith("/worker-state/v1") and event["state"] in (
                "running", "failed"):
            break
    ws.close()
    assert "done" in phases, phases
    assert _serving(b)["state"] == "running", _serving(b)
    print(f"accept -> worker joined with one install: {time.perf_counter() - t0:.2f} s")
    b_id = b.api("GET", "device")["id"]
    assert b_id in {w["device_id"] for w in a.api("GET", "cluster")["workers"]}
    # the worker's interpreter is the selected kernel's, and it now has the package
    after = b.api("POST", "environment/check", {"kernel": kernel,
                                                "requirements": [f"{TOY}==2.0"]})
    mismatch = {e["name"]: e for e in after["diff"]}[TOY]
    assert mismatch["installed"] == "1.0" and mismatch["action"] != "ok"


def test_failed_install_names_the_package_and_starts_no_worker(make_device, make_venv,
                                                               wheelhouse):
    venv = make_venv("toyenv")
    a = make_device("alpha")
    b = make_device("bravo", env={"PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_INDEX": "1"})
    kernel = _kernel(b, venv)
    sent = a.api("POST", "invitations", {
        "url": b.peer_url, "asks": {"requirements": ["px-no-such-package-anywhere==9.9"]}})
    b.api("POST", f"requests/{sent['id']}/accept", {"kernel": kernel})
    entry = wait_for(lambda: (s := _serving(b)) and s["state"] == "failed" and s, 90, 0.2)
    assert "px-no-such-package-anywhere" in entry["message"]
    assert entry["process"] is None
    assert a.api("GET", "cluster")["workers"] == []
    assert not list((b.home / "state" / "workers").glob("*/join.json"))


def test_non_python_kernel_cannot_be_selected(make_device):
    a, b = make_device("alpha"), make_device("bravo")
    write_kernelspec(b.home / "jupyter-data" / "kernels", "ir", ["/usr/bin/env", "R"],
                     language="R")
    kernels = {k["name"]: k for k in b.api("GET", "kernels?refresh=true")}
    assert kernels["ir"]["selectable"] is False and kernels["ir"]["reason"]
    sent = a.api("POST", "invitations", {"url": b.peer_url})
    try:
        b.api("POST", f"requests/{sent['id']}/accept", {"kernel": "ir"})
    except Exception as err:  # noqa: BLE001 - checked below
        assert "400" in str(err) and "cannot run a worker" in str(err)
    else:
        raise AssertionError("accepting with a non-Python kernel must fail")
    assert b.api("GET", f"requests/{sent['id']}")["state"] == "pending"
