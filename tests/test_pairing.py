import base64
import copy
import re
import time

import pytest

from parallalx_jupyter.identity import DeviceIdentity, device_id_from_public_der
from parallalx_jupyter.pairing import (
    ProtocolError,
    canonical_json,
    clean_text,
    commitment,
    new_nonce,
    open_envelope,
    parse_json,
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


# --- hostile JSON and envelopes: every refusal is a ProtocolError(400/401), never a crash ------


@pytest.mark.parametrize("raw, message", [
    (b'{"a": ' + b"1" * 5000 + b"}", "too long"),  # json.loads alone: ValueError (int limit)
    (b'{"a": -' + b"9" * 4301 + b"}", "too long"),
    (b'{"a": ' + b"1" * 400 + b"}", "too long"),  # parses, but float() of it overflows
    (b'{"a": NaN}', "NaN"),
    (b'{"a": Infinity}', "Infinity"),
    (b'{"a": -Infinity}', "-Infinity"),
    (b'{"a": 1e400}', "out of range"),  # json.loads alone: inf
    (b'{"a": -1e400}', "out of range"),
    (b"[" * 100_000, "nested too deeply"),  # the parser's RecursionError
    (b"[" * 65 + b"]" * 65, "nested too deeply"),  # valid JSON, deeper than any message
    (b'{"a": "\\ud800"}', "not valid Unicode"),  # a lone surrogate: SQLite cannot store it
    (b'{"\\udfff": 1}', "not valid Unicode"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b'"\xed\xa0\x80"', "not valid JSON"),  # a surrogate encoded as UTF-8 bytes (CESU)
    ('{"a": 1}'.encode("utf-16"), "not valid JSON"),
], ids=["int-5000-digits", "int-4301-digits", "int-400-digits", "NaN", "Infinity", "-Infinity",
        "1e400", "-1e400", "nested-100000", "nested-65", "surrogate-value", "surrogate-key",
        "not-utf8", "cesu-surrogate", "utf16"])
def test_parse_json_refuses_what_would_crash_later(raw, message):
    with pytest.raises(ProtocolError) as err:
        parse_json(raw)
    assert err.value.status == 400
    assert message in err.value.message and len(err.value.message) < 300


def test_parse_json_keeps_ordinary_json():
    text = '{"a": [1, -2.5, 1e300, "\\ud83d\\ude00", null, true], "b": {"c": ' + "9" * 64 + "}}"
    assert parse_json(text.encode()) == {
        "a": [1, -2.5, 1e300, "\U0001F600", None, True], "b": {"c": int("9" * 64)},
    }
    assert parse_json(b"[" * 64 + b"]" * 64) is not None


def _resigned(identity, env):
    env["signature"] = base64.b64encode(identity.sign(canonical_json(env["payload"]))).decode()
    return env


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), float("-inf"), 10**400, -1.0, 1e12,
                                "now", True, None, [1]],
                         ids=["NaN", "Infinity", "-Infinity", "int-401-digits", "negative",
                              "year-33658", "string", "bool", "null", "list"])
def test_impossible_timestamps_are_400_even_when_signed(pair, ts):
    """NaN made every comparison false, so it passed the clock-skew check (and then broke the
    nonce store); a 401-digit integer overflowed float() (a 500)."""
    a, b = pair
    env = seal(a, "request.open", b.device_id, OPEN_BODY, time.time())
    env["payload"]["ts"] = ts
    env = _resigned(a, env)
    with pytest.raises(ProtocolError) as err:
        open_envelope(env, receiver_id=b.device_id, now=time.time(), skew=60)
    assert err.value.status == 400 and "'ts'" in err.value.message


def test_a_key_on_an_unsupported_curve_is_refused_not_a_crash(pair):
    """The sender picks its key; one on a curve OpenSSL lacks made verification raise
    UnsupportedAlgorithm (not a ValueError): a 500 on the listener."""
    a, b = pair
    # SubjectPublicKeyInfo of an EC key on secp112r1 (OID 1.3.132.0.6)
    der = bytes.fromhex(
        "3032301006072a8648ce3d020106052b81040006031e0004"
        "9c856d69facf0fb8955319f836d654020a78688a51f658907355db5e"
    )
    env = seal(a, "request.open", b.device_id, OPEN_BODY, time.time())
    env["payload"]["sender_key"] = base64.b64encode(der).decode()
    env["payload"]["sender_id"] = device_id_from_public_der(der)
    with pytest.raises(ProtocolError) as err:
        open_envelope(env, receiver_id=b.device_id, now=time.time(), skew=60)
    assert err.value.status == 401 and "P-256" in err.value.message


def test_unexpected_types_are_refused_before_the_signature(pair):
    """A `response` has no body schema; the listener names the types it takes, and anything
    else is a 400 before its content is looked at (here: before a bad signature)."""
    a, b = pair
    env = seal(a, "response", b.device_id, {"anything": [[["goes"]]]}, time.time())
    env["signature"] = base64.b64encode(b"\0" * 64).decode()
    with pytest.raises(ProtocolError) as err:
        open_envelope(env, receiver_id=b.device_id, now=time.time(), skew=60,
                      expected_type=("request.decided", "device.revoked"))
    assert err.value.status == 400 and "'response'" in err.value.message


@pytest.mark.parametrize("nonce", ["ab " * 16 + "ab" * 8, "g" * 64, "é" * 64],
                         ids=["spaced-hex", "not-hex", "non-ascii"])
def test_nonces_are_strict_hex(pair, nonce):
    """bytes.fromhex skips whitespace, so a spaced string used to pass as a 64-char nonce."""
    a, b = pair
    env = seal(a, "request.reveal", b.device_id, {"request_id": "r", "nonce": nonce}, time.time())
    with pytest.raises(ProtocolError) as err:
        open_envelope(env, receiver_id=b.device_id, now=time.time(), skew=60)
    assert err.value.status == 400 and "nonce" in err.value.message


def test_request_ids_never_start_like_an_option():
    """`parallalx accept -xAQ...` read the ID as an option: IDs start with a letter or digit
    (2000 draws: with token_urlsafe alone, about 1 in 32 started with "-" or "_")."""
    from parallalx_jupyter.pairing import new_request_id

    ids = [new_request_id() for _ in range(2000)]
    assert all(i[0].isalnum() for i in ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_\-]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_string_over_its_limit_is_called_too_long_not_the_wrong_type():
    """QA: a 9,000-character purpose was refused as "must be a string"."""
    from parallalx_jupyter.pairing import ASKS_SPEC, ProtocolError, validate

    with pytest.raises(ProtocolError, match=r"field 'purpose' is too long: 9,000 characters, "
                       r"at most 4,096"):
        validate({"purpose": "x" * 9000}, ASKS_SPEC, "asks")
    with pytest.raises(ProtocolError, match=r"field 'purpose' must be a string"):
        validate({"purpose": 5}, ASKS_SPEC, "asks")
