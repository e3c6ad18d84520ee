"""The cluster's certificate revocation list: what makes a revoked certificate fail the TLS
handshake itself, on the scheduler and on every worker.

Only the main device's Jupyter server process holds the CA key (the scheduler subprocess
never loads it), so this module runs there: it keeps a ledger of every device certificate the
CA issued (``issued.json``: serial -> device, expiry), and writes ``crl.pem``, signed by the
CA, listing

* every serial revoked on its own (``RevocationList.serials``), and
* every serial ever issued to a revoked device: revoking a device moves its issued serials
  into ``RevocationList.serials`` at once, so accepting the device again later (which lifts
  the device-level revocation, see ``ClusterService.sign_join``) leaves its old certificates
  revoked;

minus the serials whose certificates have expired (the handshake refuses those anyway).

The scheduler process watches ``crl.pem``, loads it into its TLS contexts and pushes it to
every worker (see ``_livetls.py``). A CRL must always exist: with ``VERIFY_CRL_CHECK_LEAF`` a
verification without a valid CRL of the issuer fails, so :func:`ensure_crl` writes an empty
one with the CA, and ``nextUpdate`` is the CA's own expiry. ``lastUpdate`` is back-dated by
the clock-skew allowance (a device whose clock is a few minutes behind still takes the list)
and is strictly later than the previous list's: OpenSSL uses the valid CRL with the latest
``lastUpdate`` when it holds several.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from ..files import write_private
from ._guard import normalize_serial
from ._livetls import crl_number, with_crl_number
from .tls import CLOCK_SKEW, ClusterCA, RevocationList

CRL_NAME = "crl.pem"
LEDGER_NAME = "issued.json"


def _now() -> _dt.datetime:
    return _dt.datetime.now(tz=_dt.timezone.utc).replace(microsecond=0)


class IssuedLedger:
    """Serials of the device certificates this CA issued: ``{serial: {device, not_after}}``.

    Entries are dropped a day after their certificate expired.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self.entries: dict[str, dict] = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            self.entries = {}

    @classmethod
    def in_dir(cls, cluster_dir: str | os.PathLike) -> IssuedLedger:
        return cls(Path(cluster_dir) / LEDGER_NAME)

    def record(self, cert: x509.Certificate, device_id: str) -> None:
        now = time.time()
        self.entries = {
            s: e for s, e in self.entries.items() if e.get("not_after", now) > now - 86400
        }
        self.entries[normalize_serial(cert.serial_number)] = {
            "device": device_id,
            "not_after": cert.not_valid_after_utc.timestamp(),
        }
        write_private(self.path, json.dumps(self.entries, indent=1, sort_keys=True))

    def serials_of(self, device_id: str) -> list[str]:
        return sorted(s for s, e in self.entries.items() if e.get("device") == device_id)

    def not_after(self, serial: str) -> float | None:
        entry = self.entries.get(serial)
        return float(entry["not_after"]) if entry else None


def read_crl(path: str | os.PathLike) -> tuple[int, x509.CertificateRevocationList] | None:
    """``(number, crl)`` of a parallalx CRL file, or None when missing or unreadable."""
    try:
        text = Path(path).read_text()
        crl = x509.load_pem_x509_crl(text[text.index("-----BEGIN") :].encode())
    except (OSError, ValueError):
        return None
    number = crl_number(text)
    if number is None:
        try:
            number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
        except x509.ExtensionNotFound:
            number = 0
    return number, crl


def write_crl(cluster_dir: str | os.PathLike, ca: ClusterCA | None = None) -> Path:
    """Sign and write ``crl.pem`` from ``revoked.json`` and the issued ledger (atomic)."""
    cluster_dir = Path(cluster_dir)
    ca = ca or ClusterCA.load(cluster_dir)
    revocations = RevocationList.in_dir(cluster_dir)
    ledger = IssuedLedger.in_dir(cluster_dir)
    path = cluster_dir / CRL_NAME
    previous = read_crl(path)
    number, last = 0, None
    if previous is not None and previous[1].issuer == ca.cert.subject:
        number, last = previous[0], previous[1].last_update_utc
    this_update = _now() - CLOCK_SKEW
    if last is not None and this_update <= last:
        this_update = last + _dt.timedelta(seconds=1)
    now = time.time()
    revoked: dict[str, float] = {}
    for serial, info in revocations.serials.items():
        revoked[serial] = float(info.get("revoked_at") or now)
    for device_id, info in revocations.devices.items():
        for serial in ledger.serials_of(device_id):
            revoked.setdefault(serial, float(info.get("revoked_at") or now))
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(this_update)
        .next_update(ca.cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number + 1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    for serial, revoked_at in sorted(revoked.items()):
        expires = ledger.not_after(serial)
        if expires is not None and expires < now:
            continue  # expired: refused at the handshake anyway
        when = _dt.datetime.fromtimestamp(min(revoked_at, now), tz=_dt.timezone.utc)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(when.replace(microsecond=0))
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    text = with_crl_number(crl.public_bytes(serialization.Encoding.PEM).decode(), number + 1)
    write_private(path, text)
    os.chmod(path, 0o644)
    return path


def ensure_crl(cluster_dir: str | os.PathLike, ca: ClusterCA | None = None) -> Path:
    """Write ``crl.pem`` when it is missing, unreadable, from another CA, older than
    ``revoked.json`` or past half of its validity."""
    cluster_dir = Path(cluster_dir)
    ca = ca or ClusterCA.load(cluster_dir)
    path = cluster_dir / CRL_NAME
    current = read_crl(path)
    stale = current is None or current[1].issuer != ca.cert.subject
    if not stale:
        try:
            stale = path.stat().st_mtime_ns < (cluster_dir / RevocationList.FILE_NAME).stat(
            ).st_mtime_ns
        except FileNotFoundError:
            pass
        next_update = current[1].next_update_utc
        if next_update is None or next_update < _now() + _dt.timedelta(days=30):
            stale = True
    return write_crl(cluster_dir, ca) if stale else path


def revoke_device(cluster_dir: str | os.PathLike, device_id: str, reason: str = "") -> None:
    """Revoke a device and every certificate it was issued, then re-sign the CRL."""
    ledger = IssuedLedger.in_dir(cluster_dir)
    RevocationList.in_dir(cluster_dir).revoke_device(
        device_id, reason, serials=ledger.serials_of(device_id)
    )
    write_crl(cluster_dir)


def revoke_serial(cluster_dir: str | os.PathLike, serial: int | str, reason: str = "") -> None:
    """Revoke one certificate, then re-sign the CRL."""
    RevocationList.in_dir(cluster_dir).revoke_serial(serial, reason)
    write_crl(cluster_dir)


__all__ = [
    "CRL_NAME",
    "LEDGER_NAME",
    "IssuedLedger",
    "ensure_crl",
    "read_crl",
    "revoke_device",
    "revoke_serial",
    "write_crl",
]
