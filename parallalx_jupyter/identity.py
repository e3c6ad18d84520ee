"""Device identity: the key pair, its self-signed certificate and the device ID derived from it.

The device ID is the SHA-256 fingerprint of the public key, so anyone holding a signed message and
the sender's public key can check the claimed ID without asking a third party. It is shown the
Syncthing way (base32, a Luhn check character per chunk, groups of seven) so that a typo or a
misread character is caught when people compare IDs by eye.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .files import create_private_exclusive, write_private

_B32_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
KEY_FILE = "device-key.pem"
CERT_FILE = "device-cert.pem"


def _luhn_base32(chunk: str) -> str:
    """Luhn mod 32 check character, as Syncthing computes it, so IDs look familiar."""
    factor = 1
    total = 0
    n = len(_B32_ALPHABET)
    for ch in chunk:
        code = _B32_ALPHABET.index(ch)
        addend = factor * code
        factor = 1 if factor == 2 else 2
        addend = (addend // n) + (addend % n)
        total += addend
    remainder = total % n
    return _B32_ALPHABET[(n - remainder) % n]


def device_id_from_public_der(public_der: bytes) -> str:
    """The canonical (ungrouped, unchecked) device ID: base32 of SHA-256 over the key's DER."""
    digest = hashlib.sha256(public_der).digest()
    return base64.b32encode(digest).decode("ascii").rstrip("=")


def display_device_id(device_id: str) -> str:
    """Group an ID in 8 blocks of 7 with a Luhn check character after every 13 characters."""
    raw = device_id.upper()
    if len(raw) != 52 or any(c not in _B32_ALPHABET for c in raw):
        raise ValueError("not a device ID")
    checked = "".join(raw[i : i + 13] + _luhn_base32(raw[i : i + 13]) for i in range(0, 52, 13))
    return "-".join(checked[i : i + 7] for i in range(0, 56, 7))


def parse_device_id(text: str) -> str:
    """Accept an ID in canonical or display form; verify the check characters of the latter."""
    cleaned = text.strip().upper().replace("-", "").replace(" ", "")
    if len(cleaned) == 52 and all(c in _B32_ALPHABET for c in cleaned):
        return cleaned
    if len(cleaned) != 56 or any(c not in _B32_ALPHABET for c in cleaned):
        raise ValueError("not a device ID")
    raw = ""
    for i in range(0, 56, 14):
        chunk, check = cleaned[i : i + 13], cleaned[i + 13]
        if _luhn_base32(chunk) != check:
            raise ValueError("device ID check character mismatch (typo?)")
        raw += chunk
    return raw


def public_key_from_der(public_der: bytes) -> ec.EllipticCurvePublicKey:
    key = serialization.load_der_public_key(public_der)
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("device keys must be EC P-256")
    return key


def verify_signature(public_der: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is the holder of `public_der` signing `message`."""
    try:
        public_key_from_der(public_der).verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


_RACE_PATIENCE = 5.0  # seconds a loser waits for the winner's key to be complete


def _read_key(path: Path, patience: float = 0.0) -> ec.EllipticCurvePrivateKey:
    """The EC key in `path`; ValueError naming the path if it is not one (after retrying for
    `patience` seconds, for a key another process is still writing)."""
    deadline = time.monotonic() + patience
    while True:
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except ValueError as err:
            if time.monotonic() < deadline:
                time.sleep(0.02)
                continue
            raise ValueError(
                f"{path} is not a readable device key ({err}); move it away to create a new "
                "device identity (a new device ID: paired devices must pair again)"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path} is not an EC private key")
        return key


@dataclass(frozen=True)
class DeviceIdentity:
    """A device's long-lived key, the certificate its peer listener serves, and its ID."""

    private_key: ec.EllipticCurvePrivateKey
    cert_path: Path
    key_path: Path

    @property
    def public_der(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_der).decode("ascii")

    @property
    def device_id(self) -> str:
        return device_id_from_public_der(self.public_der)

    @property
    def display_id(self) -> str:
        return display_device_id(self.device_id)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message, ec.ECDSA(hashes.SHA256()))

    @classmethod
    def load_or_create(cls, home: Path) -> DeviceIdentity:
        """Load the device key from `home`, creating key and certificate on first start.

        The key is created exclusively (`files.create_private_exclusive`): when several
        processes make their first start on one home at the same moment, one key wins and
        every process, the losers included, loads and uses that one, so they all report the
        same device ID. An existing key is never replaced; one that cannot be read stops the
        load with its path (replacing it would silently give the device a new ID)."""
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        key_path = home / KEY_FILE
        cert_path = home / CERT_FILE
        key: ec.EllipticCurvePrivateKey | None = None
        raced = False
        if not key_path.exists():
            fresh = ec.generate_private_key(ec.SECP256R1())
            pem = fresh.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            if create_private_exclusive(key_path, pem):
                key = fresh
            else:
                raced = True
        if key is None:
            # another process may still be writing it where the filesystem has no hard links
            key = _read_key(key_path, patience=_RACE_PATIENCE if raced else 0.0)
            os.chmod(key_path, 0o600)
        identity = cls(private_key=key, cert_path=cert_path, key_path=key_path)
        if not cert_path.exists() or not identity._cert_matches_key():
            identity._write_certificate()
        os.chmod(cert_path, 0o600)
        return identity

    def _cert_matches_key(self) -> bool:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
        except ValueError:
            return False
        pub = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        fresh = cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc)
        return pub == self.public_der and fresh

    def _write_certificate(self) -> None:
        """Self-signed: peers authenticate us by key fingerprint and signatures, not by a CA."""
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device_id)])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"parallalx:device:{self.device_id}")]
                ),
                critical=False,
            )
            .sign(self.private_key, hashes.SHA256())
        )
        write_private(self.cert_path, cert.public_bytes(serialization.Encoding.PEM))
