"""The pairing protocol as plain logic: signed envelopes, strict body schemas, commit-then-reveal.

Every peer message is `{"payload": {...}, "signature": b64}` where the payload names the protocol
version, the message type, the sender's ID and public key, the receiver's ID, a single-use nonce
and a timestamp. The signature covers the canonical JSON of the payload, so a message cannot be
replayed to another device (receiver ID), replayed later (timestamp window) or replayed at all
(the receiver remembers nonces past a restart).

The 6-digit verification code uses Bluetooth's numeric-comparison idea: the responder commits to
its random nonce before it sees the requester's nonce, and the code is a hash of both keys and
both nonces. A man in the middle must fix its own nonces before learning the honest parties'
nonces, so it gets one guess (1 in 10^6) at making the two codes agree, and a failed guess shows
as different codes on the two screens.

Nothing here does I/O, so the whole protocol is tested without servers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import secrets
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm

from .errors import ParallalxError
from .identity import DeviceIdentity, device_id_from_public_der, verify_signature

PROTOCOL_VERSION = 1
NAME_MAX = 64
TEXT_MAX = 256
NONCE_HEX_LEN = 64
JSON_MAX_DEPTH = 64
"""Deepest nesting of arrays/objects a body may have. Every message we define is at most five
levels deep; the cap keeps later recursive code (canonical JSON, storage) far from Python's
recursion limit, which the parser alone would only stop at about a thousand levels."""
JSON_MAX_INT_DIGITS = 64
"""Longest integer literal accepted. No field needs more than 20 digits; longer ones only serve
to reach Python's int-to-str limit (4300 digits, a ValueError) or to overflow `float()`."""
TIMESTAMP_MAX = 1e11
"""Upper bound of a plausible UNIX timestamp (year 5138), so `float(ts)` can never overflow."""

REQUEST_KINDS = ("invite", "offer")
"""`invite`: the sender is the main device and asks the receiver to run workers for it.
`offer`: the sender offers to run workers for the receiver, which becomes its main device."""


class ProtocolError(ParallalxError):
    """A peer message that must be refused; `status` is the HTTP status the listener answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status)


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def new_nonce() -> str:
    return secrets.token_hex(32)


def new_request_id() -> str:
    """A random request ID (URL-safe) that never starts with "-" or "_": users type it after a
    command (`parallalx accept ID`), where a leading "-" reads as an option."""
    while True:
        request_id = secrets.token_urlsafe(12)
        if request_id[0].isalnum():
            return request_id


def clean_text(value: str, limit: int) -> str:
    """Peer-supplied text is data: drop control and format characters (bidi overrides, zero-width
    joiners) that could disguise a name, collapse whitespace and cap the length."""
    kept = []
    for ch in value:
        category = unicodedata.category(ch)
        if category in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(" " if ch in "\t\n\r" else "")
        else:
            kept.append(ch)
    text = " ".join("".join(kept).split())
    return text[:limit]


# --- strict schemas ---------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, int | float)) and not isinstance(v, bool)


def _is_hex(length: int) -> Check:
    # a regex, not bytes.fromhex: fromhex skips whitespace, so "ab cd" would pass as 2 bytes
    pattern = re.compile(f"[0-9a-fA-F]{{{length}}}")
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


def _str_max(limit: int) -> Check:
    def check(v: Any) -> bool:
        return isinstance(v, str) and len(v) <= limit

    check.max_chars = limit  # type: ignore[attr-defined]  # for validate()'s message
    return check


def _optional(check: Check) -> Check:
    def optional(v: Any) -> bool:
        return v is None or check(v)

    optional.max_chars = getattr(check, "max_chars", None)  # type: ignore[attr-defined]
    return optional


def _int_range(lo: int, hi: int) -> Check:
    return lambda v: _is_int(v) and lo <= v <= hi


def _number_range(lo: float, hi: float) -> Check:
    return lambda v: _is_number(v) and lo <= v <= hi


def validate(obj: Any, spec: Mapping[str, tuple[Check, bool, str]], where: str) -> dict[str, Any]:
    """Check `obj` against `spec` (field -> (check, required, description)); refuse extra fields
    so that a newer or hostile peer cannot smuggle data we would silently ignore."""
    if not isinstance(obj, dict):
        raise ProtocolError(400, f"{where} must be a JSON object")
    extra = sorted(set(obj) - set(spec))
    if extra:
        raise ProtocolError(400, f"{where}: unexpected field(s): {', '.join(extra[:5])}")
    for field, (check, required, description) in spec.items():
        if field not in obj:
            if required:
                raise ProtocolError(400, f"{where}: missing field '{field}'")
            continue
        if not check(obj[field]):
            limit = getattr(check, "max_chars", None)
            if limit is not None and isinstance(obj[field], str):  # the type was right
                raise ProtocolError(400, f"{where}: field '{field}' is too long: "
                                         f"{len(obj[field]):,} characters, at most {limit:,}")
            raise ProtocolError(400, f"{where}: field '{field}' must be {description}")
    return obj


ASKS_SPEC: dict[str, tuple[Check, bool, str]] = {
    "purpose": (_str_max(4096), False, "a string"),
    "nthreads": (_optional(_int_range(1, 1024)), False, "an integer 1-1024 or null"),
    "memory_limit_gb": (_optional(_number_range(0.1, 65536)), False, "a number or null"),
    "gpus": (_optional(_int_range(0, 64)), False, "an integer 0-64 or null"),
    "duration_hours": (_optional(_number_range(0.01, 8760)), False, "a number or null"),
    "requirements": (
        lambda v: isinstance(v, list) and len(v) <= 50
        and all(isinstance(r, str) and 0 < len(r) <= 256 for r in v),
        False, "a list of at most 50 requirement strings",
    ),
}

CLUSTER_SPEC: dict[str, tuple[Check, bool, str]] = {
    "scheduler_port": (_int_range(1, 65535), True, "a port number"),
    "ca_fingerprint": (_is_hex(64), True, "a SHA-256 fingerprint"),
}

OPEN_SPEC: dict[str, tuple[Check, bool, str]] = {
    "kind": (lambda v: v in REQUEST_KINDS, True, "'invite' or 'offer'"),
    "name": (_str_max(16384), True, "a string"),
    "asks": (lambda v: isinstance(v, dict), True, "an object"),
    "reply_port": (_optional(_int_range(1, 65535)), False, "a port number or null"),
    "cluster": (lambda v: isinstance(v, dict), False, "an object"),
}

REVEAL_SPEC: dict[str, tuple[Check, bool, str]] = {
    "request_id": (_str_max(64), True, "a string"),
    "nonce": (_is_hex(NONCE_HEX_LEN), True, "64 hex characters"),
}

REQUEST_REF_SPEC: dict[str, tuple[Check, bool, str]] = {
    "request_id": (_str_max(64), True, "a string"),
}

DECIDED_SPEC: dict[str, tuple[Check, bool, str]] = {
    "request_id": (_str_max(64), True, "a string"),
    "state": (lambda v: v in ("accepted", "rejected", "expired"), True, "a decision"),
}

EMPTY_SPEC: dict[str, tuple[Check, bool, str]] = {}

JOIN_SPEC: dict[str, tuple[Check, bool, str]] = {
    "csr": (_str_max(8192), True, "a PEM certificate signing request"),
    "shown_hash": (_is_hex(64), True, "the hash of the accepted request"),
}

PAYLOAD_SPEC: dict[str, tuple[Check, bool, str]] = {
    "v": (lambda v: _is_int(v) and v == PROTOCOL_VERSION, True,
          f"protocol version {PROTOCOL_VERSION}"),
    "type": (_str_max(64), True, "a string"),
    "sender_id": (_str_max(64), True, "a device ID"),
    "sender_key": (_str_max(512), True, "a base64 public key"),
    "receiver_id": (_str_max(64), True, "a device ID"),
    "nonce": (_is_hex(NONCE_HEX_LEN), True, "64 hex characters"),
    # a range check also refuses NaN (every comparison is false) and infinities
    "ts": (_number_range(0, TIMESTAMP_MAX), True, "a UNIX timestamp"),
    "in_reply_to": (_optional(_is_hex(NONCE_HEX_LEN)), False, "a nonce"),
    "body": (lambda v: isinstance(v, dict), True, "an object"),
}

BODY_SPECS: dict[str, dict[str, tuple[Check, bool, str]]] = {
    "request.open": OPEN_SPEC,
    "request.reveal": REVEAL_SPEC,
    "request.status": REQUEST_REF_SPEC,
    "request.decided": DECIDED_SPEC,
    "device.revoked": EMPTY_SPEC,
    "cluster.join": JOIN_SPEC,
}


def clean_asks(asks: Any) -> dict[str, Any]:
    """Validated, normalised copy of what a request asks for (purpose text made safe)."""
    validate(asks, ASKS_SPEC, "asks")
    out: dict[str, Any] = {k: asks.get(k) for k in ASKS_SPEC}
    out["purpose"] = clean_text(asks.get("purpose") or "run training workers", TEXT_MAX)
    out["requirements"] = [clean_text(r, 256) for r in asks.get("requirements") or []]
    return out


# --- envelopes --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """A verified peer message."""

    type: str
    sender_id: str
    sender_key: bytes
    nonce: str
    ts: float
    body: dict[str, Any]
    in_reply_to: str | None


def seal(
    identity: DeviceIdentity,
    msg_type: str,
    receiver_id: str,
    body: dict[str, Any],
    now: float,
    in_reply_to: str | None = None,
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "type": msg_type,
        "sender_id": identity.device_id,
        "sender_key": identity.public_b64,
        "receiver_id": receiver_id,
        "nonce": new_nonce(),
        "ts": now,
        "body": body,
    }
    if in_reply_to is not None:
        payload["in_reply_to"] = in_reply_to
    signature = identity.sign(canonical_json(payload))
    return {"payload": payload, "signature": base64.b64encode(signature).decode("ascii")}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise ValueError(f"number {text[:24]} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text) - text.startswith("-") > JSON_MAX_INT_DIGITS:
        raise ValueError(f"integer of {len(text)} digits is too long")
    return int(text)


def _too_deep(max_depth: int) -> ProtocolError:
    return ProtocolError(400, f"body is not valid JSON: nested too deeply (at most {max_depth} "
                              "levels)")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_tree(value: Any, max_depth: int) -> None:
    """Refuse nesting deeper than `max_depth` and strings holding a lone surrogate (a JSON
    escape such as \\ud800 decodes to one; it cannot be encoded as UTF-8, so SQLite and every
    encoder after us would fail on it). Iterative: the tree may be as deep as the parser allowed."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ProtocolError(400, "body holds text that is not valid Unicode "
                                         "(a lone surrogate escape such as \\ud800)")
        elif isinstance(item, dict | list):
            if depth > max_depth:
                raise _too_deep(max_depth)
            if isinstance(item, dict):
                stack.extend((k, depth) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def parse_json(raw: bytes | str, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """Parse a request body that anyone may have sent; every refusal is a ProtocolError(400).

    Stricter than `json.loads`, because each thing it lets through would fail later as a 500:
    only UTF-8; no NaN/Infinity (not JSON; NaN makes every comparison false, so a check
    such as `abs(now - ts) > skew` lets it through);
    no number that overflows a float (1e400 is inf) and no integer longer than
    JSON_MAX_INT_DIGITS (a 5000-digit one makes `int()` raise); nesting at most `max_depth`
    (the parser's own RecursionError is caught too); no lone surrogates."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                           parse_int=_bounded_int)
    except RecursionError:
        raise _too_deep(max_depth) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and the hooks above
        raise ProtocolError(400, f"body is not valid JSON: {str(err)[:200]}") from None
    _check_tree(value, max_depth)
    return value


def open_envelope(
    envelope: Any,
    *,
    receiver_id: str,
    now: float,
    skew: float,
    expected_type: str | tuple[str, ...] | None = None,
    expected_sender: str | None = None,
) -> Opened:
    """Check structure, freshness, addressee, key-to-ID binding and signature, in that order:
    cheap checks first so garbage costs no signature verification. `expected_type` (one type
    or several) is checked before the body, so a type the caller does not take (e.g. a
    `response`, whose body has no schema) is refused before any of its content is looked at."""
    validate(envelope, {
        "payload": (lambda v: isinstance(v, dict), True, "an object"),
        "signature": (_str_max(256), True, "a base64 string"),
    }, "message")
    payload = validate(envelope["payload"], PAYLOAD_SPEC, "payload")
    msg_type = payload["type"]
    expected = (expected_type,) if isinstance(expected_type, str) else expected_type
    if expected is not None and msg_type not in expected:
        wanted = " or ".join(f"'{t}'" for t in expected)
        raise ProtocolError(400, f"expected a {wanted} message, got '{msg_type[:64]}'")
    spec = BODY_SPECS.get(msg_type) if msg_type != "response" else None
    if msg_type != "response":
        if spec is None:
            raise ProtocolError(400, f"unknown message type '{msg_type}'")
        validate(payload["body"], spec, msg_type)
    if abs(now - float(payload["ts"])) > skew:
        raise ProtocolError(400, f"timestamp outside the allowed clock skew of {int(skew)} s")
    if payload["receiver_id"] != receiver_id:
        raise ProtocolError(400, "message is addressed to another device")
    try:
        key = base64.b64decode(payload["sender_key"], validate=True)
        signature = base64.b64decode(envelope["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(400, "sender_key and signature must be base64") from None
    if device_id_from_public_der(key) != payload["sender_id"]:
        raise ProtocolError(401, "public key does not match the claimed device ID")
    if expected_sender is not None and payload["sender_id"] != expected_sender:
        raise ProtocolError(401, "message is not from the expected device")
    try:
        good = verify_signature(key, signature, canonical_json(payload))
    except UnsupportedAlgorithm:  # e.g. an EC key on a curve OpenSSL does not implement
        raise ProtocolError(401, "sender_key is not an EC P-256 public key") from None
    if not good:
        raise ProtocolError(401, "bad signature")
    return Opened(
        type=msg_type,
        sender_id=payload["sender_id"],
        sender_key=key,
        nonce=payload["nonce"],
        ts=float(payload["ts"]),
        body=payload["body"],
        in_reply_to=payload.get("in_reply_to"),
    )


def shown_hash(request_id: str, kind: str, asks: dict[str, Any], code: str | None) -> str:
    """What the accepting user saw, as one hash: the request, what it asks (limits, job
    requirements, and for an invite the main device's scheduler port and cluster CA
    fingerprint) and the verification code, which itself binds both device keys. The accept
    and the certificate request both carry it, so nothing can change between showing and
    joining."""
    return hashlib.sha256(canonical_json({
        "request_id": request_id, "kind": kind, "asks": asks, "code": code,
    })).hexdigest()


# --- verification code ------------------------------------------------------------------------


def commitment(responder_key: bytes, requester_key: bytes, responder_nonce: str) -> str:
    h = hashlib.sha256(b"parallalx-commit-v1\0")
    h.update(responder_key + b"\0" + requester_key + b"\0" + bytes.fromhex(responder_nonce))
    return h.hexdigest()


def verification_code(
    requester_key: bytes, responder_key: bytes, requester_nonce: str, responder_nonce: str
) -> str:
    """Six digits both screens show; equal only when both saw the same keys and nonces."""
    h = hashlib.sha256(b"parallalx-code-v1\0")
    h.update(requester_key + b"\0" + responder_key + b"\0")
    h.update(bytes.fromhex(requester_nonce) + bytes.fromhex(responder_nonce))
    return f"{int.from_bytes(h.digest()[:8], 'big') % 1_000_000:06d}"
