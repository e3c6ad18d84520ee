"""Events reach jupyter_server's event stream promptly and carry no secrets."""

from __future__ import annotations

import asyncio
import json
import time

from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from parallalx_jupyter.server.events import SCHEMA_BASE


async def _collect(ws, until, timeout=10.0):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await asyncio.wait_for(ws.read_message(), deadline - time.monotonic())
        event = json.loads(msg)
        if event.get("schema_id", "").startswith(SCHEMA_BASE):
            seen.append((time.perf_counter(), event))
            if until(seen):
                return seen
    raise AssertionError(f"events not seen in time: {seen}")


def _subscribe(dev):
    url = dev.url.replace("http://", "ws://") + "/api/events/subscribe"
    return websocket_connect(HTTPRequest(url, headers={"Authorization": f"token {dev.token}"}))


async def test_request_lifecycle_events_are_prompt_and_secret_free(make_device):
    a, b = make_device("alpha"), make_device("bravo")
    ws_b, ws_a = await _subscribe(b), await _subscribe(a)
    loop = asyncio.get_running_loop()
    # an invite starts the main device's scheduler first (its address and CA are shown);
    # measure the pairing itself
    await loop.run_in_executor(None, a.api, "POST", "cluster/start")
    t0 = time.perf_counter()
    sent = await loop.run_in_executor(None, a.api, "POST", "invitations", {"url": b.peer_url})
    received = await _collect(ws_b, lambda s: any("request-received" in e["schema_id"]
                                                  for _, e in s))
    latency = received[-1][0] - t0
    event = received[-1][1]
    assert event["request_id"] == sent["id"] and event["peer_name"] == "alpha"
    await loop.run_in_executor(None, b.api, "POST", f"requests/{sent['id']}/accept", {})
    on_a = await _collect(ws_a, lambda s: any("device-added" in e["schema_id"] for _, e in s))
    names = {e["schema_id"].split("/")[-2] for _, e in on_a}
    assert {"request-decided", "device-added"} <= names
    print(f"invite -> request-received event on the receiver: {latency * 1000:.0f} ms")
    assert latency < 1.0
    blob = json.dumps([e for _, e in received + on_a])
    for secret in (sent["code"], a.token, b.token):
        assert secret not in blob
    for field in ("nonce", "public_key", "signature", "code"):
        assert f'"{field}"' not in blob
    ws_a.close()
    ws_b.close()
