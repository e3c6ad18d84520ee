"""The kernel-side client: finding the server (a kernel's own server first, then the environment,
then server.json) and the event stream (only parallalx events, from a background thread)."""

from __future__ import annotations

import json
import textwrap

import pytest
import websocket
from kernel_helpers import kernel_client, run_in_kernel

from parallalx_jupyter.client import ApiClient
from parallalx_jupyter.local_device import LocalDevice, wait_for
from parallalx_jupyter.notebook import api


def test_outside_a_kernel_the_environment_then_server_json_is_used(alpha, tmp_path,
                                                                   monkeypatch):
    for key in ("PARALLALX_URL", "PARALLALX_TOKEN", "PARALLALX_HOME"):
        monkeypatch.delenv(key, raising=False)
    assert api.find_kernel_server() is None  # pytest is not a kernel
    monkeypatch.setenv("PARALLALX_URL", alpha.url)
    monkeypatch.setenv("PARALLALX_TOKEN", alpha.token)
    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path / "ignored while PARALLALX_URL is set"))
    ref = api.locate_server()
    assert (ref.url, ref.token, ref.found_by) == (alpha.url, alpha.token, "PARALLALX_URL")
    assert alpha.token not in repr(ref) and alpha.token not in repr(api.connect())

    monkeypatch.delenv("PARALLALX_URL")
    monkeypatch.setenv("PARALLALX_HOME", str(alpha.home / "state"))
    ref = api.locate_server()
    assert ref.found_by == "server.json" and ref.url.startswith(alpha.url)
    assert ApiClient(ref.url, ref.token).call("GET", "device")["name"] == "alpha"

    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path / "nowhere"))
    with pytest.raises(api.ServerNotFound, match="PARALLALX_URL"):
        api.locate_server()






def test_a_kernel_finds_the_jupyter_server_it_belongs_to(bravo, tmp_path):
    """A kernel started by a device's Jupyter server talks to that server, even when the
    environment it inherited names another device."""
    dev = LocalDevice(home=tmp_path / "charlie", name="charlie",
                      env={"PARALLALX_URL": bravo.url, "PARALLALX_TOKEN": bravo.token}).start()
    kc = None
    kernel_id = ApiClient(dev.url, dev.token, timeout=90).request("POST", "api/kernels", {})["id"]
    try:
        kc = kernel_client(dev, kernel_id)
        out = run_in_kernel(kc, textwrap.dedent("""
            import json
            from parallalx_jupyter.notebook import api
            ref = api.locate_server()
            print(json.dumps({"found_by": ref.found_by, "url": ref.url}))
            get_ipython().run_line_magic("load_ext", "parallalx_jupyter")
            get_ipython().run_line_magic("parallalx", "status -o st")
            print(json.dumps([st["device"]["name"], st["server"]["found_by"]]))
        """))
        lines = out.strip().splitlines()
        assert json.loads(lines[0]) == {"found_by": "kernel", "url": dev.url + "/"}
        assert json.loads(lines[-1]) == ["charlie", "kernel"]
    finally:
        if kc is not None:
            kc.stop_channels()
        dev.stop()


def test_event_stream_passes_on_only_parallalx_events(alpha, bravo):
    client = ApiClient(bravo.url, bravo.token)
    raw = websocket.create_connection(client.ws_url(api.EVENTS_PATH),
                                      header=[f"Authorization: token {bravo.token}"], timeout=10)
    stream = api.EventStream(client)
    got: list[dict] = []
    unsubscribe = stream.subscribe(got.append)
    try:
        wait_for(lambda: stream.mode == "websocket", 15)
        # an event of jupyter_server's own (a file save) and then one of ours
        client.request("PUT", "api/contents/note.txt",
                       {"type": "file", "format": "text", "content": "hi"})
        sent = alpha.api("POST", "invitations", {"url": bravo.peer_url})
        wait_for(lambda: any(e.get("request_id") == sent["id"] for e in got), 5, 0.01)
        seen_raw = []
        while not any(e.get("request_id") == sent["id"] for e in seen_raw):
            seen_raw.append(json.loads(raw.recv()))
        assert any("contents_service" in e.get("schema_id", "") for e in seen_raw)
        assert got[0] == {"source": "connected"}
        assert all(e["schema_id"].startswith(api.SCHEMA_PREFIX) for e in got[1:])
        received = [e for e in got if e.get("request_id") == sent["id"]]
        assert received[0]["schema_id"].endswith("/request-received/v1")
        assert received[0]["peer_name"] == "alpha"
        unsubscribe()  # the last subscriber left: the thread stops; a new one starts it again
        unsubscribe = stream.subscribe(got.append)
        wait_for(lambda: stream.mode == "websocket", 15)
    finally:
        raw.close()
        unsubscribe()
    wait_for(lambda: stream.mode == "stopped", 15)
