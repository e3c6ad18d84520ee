"""The peer listener under hostile input, over real HTTPS: against in-process devices (the
listener, DeviceManager and store of a device, without its Jupyter server), and against device
processes where Jupyter itself or the CLI is part of what is checked (e2e)."""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from itertools import count

import pytest
from inprocess_device import InProcessDevice

from parallalx_jupyter.identity import DeviceIdentity, device_id_from_public_der
from parallalx_jupyter.local_device import DeviceError, wait_for
from parallalx_jupyter.pairing import canonical_json, new_nonce, seal

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
def bravo(make_inprocess_device):
    return make_inprocess_device("bravo")


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


def test_an_oversized_body_is_read_before_the_413_so_a_slow_sender_gets_the_answer(bravo):
    """Answering from the headers alone closed the connection while the sender was still
    writing its body: it saw "EOF occurred in violation of protocol", not the 413."""
    import socket
    import ssl

    body = b"x" * (70 * 1024)
    raw = socket.create_connection(("127.0.0.1", bravo.peer_port), timeout=20)
    conn = _TLS.wrap_socket(raw, server_hostname="127.0.0.1")
    try:
        conn.sendall(b"POST /parallalx/peer/v1/requests HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        conn.sendall(body[:1024])
        conn.settimeout(0.5)
        with pytest.raises((TimeoutError, socket.timeout, ssl.SSLWantReadError)):
            conn.recv(1)  # no answer while the body is still coming
        conn.settimeout(20)
        conn.sendall(body[1024:])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += conn.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413")
    finally:
        conn.close()


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


def test_flood_is_throttled_while_jupyter_stays_responsive(make_device, sender):
    """One address hammering the listener gets 429s; Jupyter's /api/status keeps answering."""
    bravo = make_device("bravo")
    bravo_id = bravo.api("GET", "device")["id"]
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


# --------------------------------------------------------------------------- many addresses


def call_from(source_ip, dev, path, body=None, raw=None):
    """(status, parsed JSON) of one POST sent from `source_ip`: every 127.0.0.x is routed over
    loopback on Linux, so the listener's per-address caps and rate limits see each source
    address as another machine. The answer must be JSON (a bare HTML 400 fails here)."""
    conn = http.client.HTTPSConnection("127.0.0.1", dev.peer_port, context=_TLS, timeout=20,
                                       source_address=(source_ip, 0))
    try:
        data = raw if raw is not None else json.dumps(body).encode()
        conn.request("POST", f"/parallalx/peer/v1{path}", body=data,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read()
        return resp.status, json.loads(text) if text else None
    finally:
        conn.close()


def run_cli(dev, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    proc = subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "--home", str(dev.home / "state"), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_unrevealed_opens_cannot_lock_out_a_real_device(make_device, tmp_path):
    """60 requests opened from 12 addresses and never revealed fill max_pending (50); after the
    reveal window they stop counting, a real device's invite goes through, and the user sees
    them as "50 incomplete requests" (device view and CLI), not as requests."""
    window = 8.0
    bravo = make_device("bravo", reveal_window=window)
    bravo_id = bravo.api("GET", "device")["id"]
    alpha = make_device("alpha")
    alpha.api("POST", "cluster/start")  # so that the invite below is one quick round trip
    senders = [DeviceIdentity.load_or_create(tmp_path / f"mallory{i}") for i in range(60)]
    statuses, opened = [], []
    for i, ident in enumerate(senders):
        ip = f"127.0.0.{2 + i % 12}"
        status, resp = call_from(ip, bravo, "/requests", seal(
            ident, "request.open", bravo_id, open_body(f"mallory{i}"), time.time()))
        statuses.append(status)
        if status == 201:
            opened.append((ident, ip, resp["payload"]["body"]["request_id"]))
    last_open = time.time()
    assert statuses.count(201) == 50 and set(statuses) == {201, 429}, statuses
    # inside the window the caps hold: a real device is refused, visibly
    with pytest.raises(DeviceError) as err:
        alpha.api("POST", "invitations", {"url": bravo.peer_url})
    assert "too many open requests" in str(err.value)
    assert time.time() < last_open + window, "the flood took longer than the reveal window"

    time.sleep(max(0.0, last_open + window - time.time()) + 0.5)
    sent = alpha.api("POST", "invitations", {"url": bravo.peer_url})
    assert sent["state"] == "pending"
    shown = bravo.api("GET", "requests")
    assert [r["id"] for r in shown] == [sent["id"]] and shown[0]["code"] == sent["code"]
    bravo.api("POST", f"requests/{sent['id']}/accept", {})
    wait_for(lambda: alpha.api("GET", f"requests/{sent['id']}")["state"] == "accepted", 15)

    # a reveal after the window is refused; the address's own cap is free again
    ident, ip, rid = opened[0]
    status, resp = call_from(ip, bravo, f"/requests/{rid}/reveal", seal(
        ident, "request.reveal", bravo_id, {"request_id": rid, "nonce": new_nonce()},
        time.time()))
    assert status == 409 and ("expired" in resp["error"] or "no longer open" in resp["error"])
    late = DeviceIdentity.load_or_create(tmp_path / "late")
    status, resp = call_from(ip, bravo, "/requests", seal(
        late, "request.open", bravo_id, open_body("late"), time.time()))
    assert status == 201, resp

    # what the user sees: the count, never the unrevealed requests themselves
    assert bravo.api("GET", "device")["incomplete_requests"] == 50
    assert [r["id"] for r in bravo.api("GET", "requests?state=all")] == [sent["id"]]
    assert "50 incomplete requests" in run_cli(bravo, "requests")
    assert "incomplete" not in run_cli(alpha, "requests")


# --------------------------------------------------------------------------- hostile input


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """One device for the hostile-input cases (each case comes from its own source address,
    so the per-address rate limit never answers instead of the check under test)."""
    dev = InProcessDevice(home=tmp_path_factory.mktemp("target"), name="target").start()
    dev.mallory = DeviceIdentity.load_or_create(tmp_path_factory.mktemp("mallory"))
    yield dev
    dev.stop()


_source_ips = (f"127.0.{n // 250}.{2 + n % 250}" for n in count(250))


def _signed(ident, receiver, msg_type, message_body, **payload):
    """A correctly signed envelope whose payload fields are overridden after sealing."""
    env = seal(ident, msg_type, receiver, message_body, time.time())
    env["payload"].update(payload)
    env["signature"] = base64.b64encode(ident.sign(canonical_json(env["payload"]))).decode()
    return env


def _unsupported_curve_key(ident, receiver):
    # an EC key on secp112r1: loading it raises UnsupportedAlgorithm, not ValueError
    der = bytes.fromhex("3032301006072a8648ce3d020106052b81040006031e0004"
                        "9c856d69facf0fb8955319f836d654020a78688a51f658907355db5e")
    env = seal(ident, "request.open", receiver, open_body(), time.time())
    env["payload"]["sender_key"] = base64.b64encode(der).decode()
    env["payload"]["sender_id"] = device_id_from_public_der(der)
    return env


def _nested(depth):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _raw(env, old, new):
    """The envelope as JSON text with one literal replaced (for what json.dumps cannot write)."""
    text = json.dumps(env)
    assert old in text
    return text.replace(old, new, 1).encode()


OPEN = "/requests"
# (id, path, build(ident, receiver) -> envelope dict or raw bytes, status)
HOSTILE = [
    ("int-5000-digits", OPEN, lambda i, r: b'{"payload": ' + b"1" * 5000 + b', "signature": ""}',
     400),
    ("int-5000-digits-in-ts", OPEN, lambda i, r: _raw(_signed(i, r, "request.open", open_body(),
                                                               ts=123.25), "123.25", "9" * 5000),
     400),
    ("int-401-digits-in-ts", OPEN, lambda i, r: _signed(i, r, "request.open", open_body(),
                                                        ts=10**400), 400),
    ("ts-NaN", OPEN, lambda i, r: _signed(i, r, "request.open", open_body(), ts=float("nan")),
     400),
    ("ts-Infinity", OPEN, lambda i, r: _signed(i, r, "request.open", open_body(),
                                               ts=float("inf")), 400),
    ("ts--Infinity", OPEN, lambda i, r: _signed(i, r, "request.open", open_body(),
                                                ts=float("-inf")), 400),
    ("ts-1e400", OPEN, lambda i, r: _raw(_signed(i, r, "request.open", open_body(), ts=123.25),
                                         "123.25", "1e400"), 400),
    ("nested-deeply", OPEN, lambda i, r: b"[" * 60_000, 400),
    ("nested-100-in-signed-body", OPEN, lambda i, r: _signed(
        i, r, "request.open", {**open_body(), "cluster": {"x": _nested(100)}}), 400),
    ("not-utf8", OPEN, lambda i, r: b'{"payload": "\xff\xfe"}', 400),
    ("cesu-surrogate", OPEN, lambda i, r: b'{"payload": "\xed\xa0\x80", "signature": ""}', 400),
    ("lone-surrogate-in-notify", "/notify", lambda i, r: _signed(
        i, r, "request.decided", {"request_id": "\ud800", "state": "accepted"}), 400),
    ("lone-surrogate-in-name", OPEN, lambda i, r: _signed(
        i, r, "request.open", {**open_body(), "name": "\udfffx"}), 400),
    ("unsupported-curve-key", OPEN, _unsupported_curve_key, 401),
    ("response-type", "/notify", lambda i, r: _signed(i, r, "response", {"x": [[1]]}), 400),
    ("spaced-hex-nonce", OPEN, lambda i, r: _signed(
        i, r, "request.open", open_body(), nonce="ab " * 16 + "ab" * 8), 400),
]
# wrong types, field by field: envelope, payload, each message body, asks and cluster
_WRONG = [5, "x", None, [], {}, True, 1.5]
for _field in ("payload", "signature"):
    for _value in _WRONG:
        HOSTILE.append((f"envelope-{_field}-{json.dumps(_value)}", OPEN,
                        lambda i, r, f=_field, v=_value: {
                            **seal(i, "request.open", r, open_body(), time.time()), f: v},
                        400))
for _field in ("v", "type", "sender_id", "sender_key", "receiver_id", "nonce", "ts",
               "in_reply_to", "body"):
    for _value in _WRONG:
        if _field == "in_reply_to" and _value is None:
            continue  # optional: null is allowed
        HOSTILE.append((f"payload-{_field}-{json.dumps(_value)}", OPEN,
                        lambda i, r, f=_field, v=_value: _signed(
                            i, r, "request.open", open_body(), **{f: v}), (400, 401)))
for _msg, _path, _body in (
    ("request.open", OPEN, open_body()),
    ("request.reveal", "/requests/abc/reveal", {"request_id": "abc", "nonce": "0" * 64}),
    ("request.status", "/requests/abc/status", {"request_id": "abc"}),
    ("request.decided", "/notify", {"request_id": "abc", "state": "accepted"}),
    ("cluster.join", "/cluster/join", {"csr": "x", "shown_hash": "0" * 64}),
):
    for _field in _body:
        for _value in _WRONG:
            if (_field in ("name", "request_id", "csr") and isinstance(_value, str)
                    or _field == "asks" and _value == {}):
                continue  # the right type there (other checks answer 403/404)
            HOSTILE.append((f"{_msg}-{_field}-{json.dumps(_value)}", _path,
                            lambda i, r, m=_msg, b=_body, f=_field, v=_value: _signed(
                                i, r, m, {**b, f: v}), 400))
for _sub, _fields in (("asks", ("purpose", "nthreads", "memory_limit_gb", "gpus",
                                "duration_hours", "requirements")),
                      ("cluster", ("scheduler_port", "ca_fingerprint"))):
    for _field in _fields:
        for _value in (["x"], {"a": 1}, "x", -1, 10**30, 1e300):
            if (_field, _value) in (("purpose", "x"), ("requirements", ["x"])):
                continue  # valid
            inner = {"scheduler_port": 1, "ca_fingerprint": "0" * 64} if _sub == "cluster" else {}
            HOSTILE.append((f"{_sub}-{_field}-{json.dumps(_value)}", OPEN,
                            lambda i, r, s=_sub, base=inner, f=_field, v=_value: _signed(
                                i, r, "request.open", {**open_body(), s: {**base, f: v}}), 400))


@pytest.mark.parametrize("path, build, status", [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_hostile_input_is_a_json_4xx_never_a_500(target, path, build, status):
    built = build(target.mallory, target.device_id)
    raw = built if isinstance(built, bytes) else json.dumps(built).encode()
    got, resp = call_from(next(_source_ips), target, path, raw=raw)
    assert got in (status if isinstance(status, tuple) else (status,)), (got, resp)
    assert set(resp) == {"error"} and isinstance(resp["error"], str) and resp["error"]
    assert "Traceback" not in resp["error"] and "internal" not in resp["error"]
