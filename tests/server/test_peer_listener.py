"""The peer listener under hostile input, against a real device process over real HTTPS."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from parallalx_jupyter.identity import DeviceIdentity
from parallalx_jupyter.pairing import new_nonce, seal

_TLS = ssl.create_default_context()
_TLS.check_hostname = False
_TLS.verify_mode = ssl.CERT_NONE


def call(dev, path, body=None, raw=None, method=None, headers=None):
    """(status, parsed JSON) of one call to `dev`'s peer listener."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(
        f"{dev.peer_url}/parallalx/peer/v1{path}", data=data, method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, context=_TLS, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text else None


@pytest.fixture
def bravo(make_device):
    return make_device("bravo")


@pytest.fixture
def bravo_id(bravo):
    return bravo.api("GET", "device")["id"]


@pytest.fixture
def sender(tmp_path):
    return DeviceIdentity.load_or_create(tmp_path / "sender")


def open_body(name="mallory"):
    return {"kind": "invite", "name": name, "asks": {"purpose": "p"}}


def open_and_reveal(dev, ident, receiver_id, name="mallory"):
    status, resp = call(dev, "/requests", seal(ident, "request.open", receiver_id,
                                               open_body(name), time.time()))
    assert status == 201, resp
    rid = resp["payload"]["body"]["request_id"]
    status, resp = call(dev, f"/requests/{rid}/reveal", seal(
        ident, "request.reveal", receiver_id, {"request_id": rid, "nonce": new_nonce()},
        time.time()))
    assert status == 200, resp
    return rid


def test_hello_names_the_device(bravo, bravo_id):
    status, hello = call(bravo, "/hello")
    assert status == 200 and hello["device_id"] == bravo_id and hello["name"] == "bravo"


def test_oversized_body_is_413(bravo, bravo_id, sender):
    env = seal(sender, "request.open", bravo_id, open_body("x" * (70 * 1024)), time.time())
    status, resp = call(bravo, "/requests", env)
    assert status == 413 and "error" in resp


@pytest.mark.parametrize("raw, fragment", [
    (b"{not json", "not valid JSON"),
    (b"[]", "must be a JSON object"),
    (b'{"payload": {}, "signature": "x", "more": 1}', "unexpected field"),
    (b'{"payload": "x", "signature": "x"}', "payload"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_bodies_are_400_with_a_message(bravo, raw, fragment):
    status, resp = call(bravo, "/requests", raw=raw)
    assert status == 400
    assert fragment in resp["error"]
    assert "Traceback" not in json.dumps(resp)


def test_wrong_types_and_extra_body_fields_are_400(bravo, bravo_id, sender):
    body = open_body()
    body["asks"] = {"nthreads": "lots"}
    status, resp = call(bravo, "/requests", seal(sender, "request.open", bravo_id, body,
                                                 time.time()))
    assert status == 400 and "nthreads" in resp["error"]
    body = {**open_body(), "admin": True}
    status, resp = call(bravo, "/requests", seal(sender, "request.open", bravo_id, body,
                                                 time.time()))
    assert status == 400 and "admin" in resp["error"]


def test_bad_signature_and_foreign_key_are_401_and_never_shown(bravo, bravo_id, sender,
                                                               tmp_path):
    env = seal(sender, "request.open", bravo_id, open_body(), time.time())
    env["payload"]["body"]["name"] = "forged"
    status, resp = call(bravo, "/requests", env)
    assert status == 401 and "signature" in resp["error"]
    other = DeviceIdentity.load_or_create(tmp_path / "other")
    env = seal(other, "request.open", bravo_id, open_body(), time.time())
    env["payload"]["sender_id"] = sender.device_id
    status, resp = call(bravo, "/requests", env)
    assert status == 401 and "device ID" in resp["error"]
    assert bravo.api("GET", "requests?state=all") == []


def test_replayed_nonce_is_409_also_after_restart(bravo, bravo_id, sender):
    env = seal(sender, "request.open", bravo_id, open_body(), time.time())
    assert call(bravo, "/requests", env)[0] == 201
    status, resp = call(bravo, "/requests", env)
    assert status == 409 and "replay" in resp["error"]
    bravo.kill()
    bravo.start()
    status, resp = call(bravo, "/requests", env)
    assert status == 409


def test_skewed_timestamp_is_400(bravo, bravo_id, sender):
    env = seal(sender, "request.open", bravo_id, open_body(), time.time() - 3600)
    status, resp = call(bravo, "/requests", env)
    assert status == 400 and "clock skew" in resp["error"]


def test_message_for_another_device_is_refused(bravo, sender, tmp_path):
    other = DeviceIdentity.load_or_create(tmp_path / "other")
    env = seal(sender, "request.open", other.device_id, open_body(), time.time())
    status, resp = call(bravo, "/requests", env)
    assert status == 400 and "another device" in resp["error"]


def test_second_request_from_one_sender_leaves_one_entry(bravo, bravo_id, sender):
    open_and_reveal(bravo, sender, bravo_id)
    second = open_and_reveal(bravo, sender, bravo_id)
    pending = bravo.api("GET", "requests")
    assert [r["id"] for r in pending] == [second]


def test_hostile_names_are_stored_as_capped_data(bravo, bravo_id, tmp_path):
    names = {
        "html": "<img src=x onerror=alert(1)><script>alert('x')</script>",
        "bidi": "admin\u202egnp.exe",
        "long": "A" * 10_000,
    }
    for key, name in names.items():
        open_and_reveal(bravo, DeviceIdentity.load_or_create(tmp_path / key), bravo_id, name)
    shown = {r["peer"]["name"] for r in bravo.api("GET", "requests")}
    assert names["html"] in shown
    assert "admingnp.exe" in shown
    assert "A" * 64 in shown
    assert all(len(n) <= 64 for n in shown)


def test_unknown_paths_and_methods_are_json_errors(bravo):
    assert call(bravo, "/../../api/status")[0] == 404
    status, resp = call(bravo, "/requests", method="GET")
    assert status == 405 and "error" in resp
    assert call(bravo, "/nope", body={})[0] == 404


def test_flood_is_throttled_while_jupyter_stays_responsive(bravo, bravo_id, sender):
    """One address hammering the listener gets 429s; Jupyter's /api/status keeps answering."""
    statuses: list[int] = []
    stop = threading.Event()
    env = seal(sender, "request.status", bravo_id, {"request_id": "nope"}, time.time())
    payload = json.dumps(env).encode()

    def hammer():
        while not stop.is_set() and len(statuses) < 600:
            statuses.append(call(bravo, "/requests/nope/status", raw=payload)[0])

    latencies = []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(4):
            pool.submit(hammer)
        t_end = time.monotonic() + 4
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            req = urllib.request.Request(f"{bravo.url}/api/status",
                                         headers={"Authorization": f"token {bravo.token}"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                assert resp.status == 200
            latencies.append(time.perf_counter() - t0)
            time.sleep(0.1)
        stop.set()
    throttled = statuses.count(429)
    rate = len(statuses) / 4
    print(f"flood: {len(statuses)} requests ({rate:.0f}/s), {throttled} throttled; "
          f"/api/status median {sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms, "
          f"max {max(latencies) * 1000:.1f} ms")
    assert throttled > len(statuses) * 0.5
    assert max(latencies) < 2.0
