import copy
import time

import pytest

from parallalx_jupyter.identity import DeviceIdentity
from parallalx_jupyter.pairing import (
    ProtocolError,
    clean_text,
    commitment,
    new_nonce,
    open_envelope,
    seal,
    verification_code,
)

OPEN_BODY = {"kind": "invite", "name": "alpha", "asks": {}}


@pytest.fixture
def pair(tmp_path):
    return (DeviceIdentity.load_or_create(tmp_path / "a"),
            DeviceIdentity.load_or_create(tmp_path / "b"))


def test_sealed_message_opens_for_its_receiver(pair):
    a, b = pair
    now = time.time()
    env = seal(a, "request.open", b.device_id, OPEN_BODY, now)
    opened = open_envelope(env, receiver_id=b.device_id, now=now, skew=60)
    assert opened.sender_id == a.device_id and opened.body == OPEN_BODY


@pytest.mark.parametrize("mutate, status, message", [
    (lambda e: e["payload"]["body"].update(name="mallory"), 401, "bad signature"),
    (lambda e: e["payload"].update(sender_key=e["payload"]["sender_key"][:-4] + "AAA="), 401,
     "does not match"),
    (lambda e: e["payload"].update(extra=1), 400, "unexpected field"),
    (lambda e: e["payload"]["body"].update(kind="steal"), 400, "kind"),
    (lambda e: e["payload"]["body"].update(name=5), 400, "name"),
    (lambda e: e["payload"].update(ts=1.0), 400, "clock skew"),
    (lambda e: e["payload"].update(receiver_id="X" * 52), 400, "another device"),
    (lambda e: e.update(signature="!!!"), 400, "base64"),
    (lambda e: e["payload"].update(v=2), 400, "protocol version"),
])
def test_tampered_messages_are_refused(pair, mutate, status, message):
    a, b = pair
    now = time.time()
    env = copy.deepcopy(seal(a, "request.open", b.device_id, OPEN_BODY, now))
    mutate(env)
    with pytest.raises(ProtocolError) as err:
        open_envelope(env, receiver_id=b.device_id, now=now, skew=60)
    assert err.value.status == status
    assert message in err.value.message


def test_someone_elses_key_cannot_claim_an_id(pair, tmp_path):
    a, b = pair
    m = DeviceIdentity.load_or_create(tmp_path / "m")
    env = seal(m, "request.open", b.device_id, OPEN_BODY, time.time())
    env["payload"]["sender_id"] = a.device_id
    with pytest.raises(ProtocolError) as err:
        open_envelope(env, receiver_id=b.device_id, now=time.time(), skew=60)
    assert err.value.status == 401


def test_codes_agree_only_with_the_same_keys_and_nonces(pair, tmp_path):
    a, b = pair
    na, nb = new_nonce(), new_nonce()
    code = verification_code(a.public_der, b.public_der, na, nb)
    assert len(code) == 6 and code.isdigit()
    assert code == verification_code(a.public_der, b.public_der, na, nb)
    m = DeviceIdentity.load_or_create(tmp_path / "m")
    # a man in the middle substitutes its key: the code changes (w.h.p.)
    assert code != verification_code(m.public_der, b.public_der, na, nb)
    assert commitment(b.public_der, a.public_der, nb) != commitment(b.public_der, a.public_der, na)


def test_clean_text_drops_bidi_and_controls_and_caps_length():
    hostile = "evil\u202egnp.exe\u0000<script>alert(1)</script>\n" + "x" * 10_000
    out = clean_text(hostile, 64)
    assert "\u202e" not in out and "\x00" not in out and "\n" not in out
    assert out.startswith("evilgnp.exe<script>")
    assert len(out) == 64
