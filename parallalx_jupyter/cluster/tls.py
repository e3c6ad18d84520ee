"""TLS material for one cluster: per-cluster CA, device certificates, revocation, Security.

Trust model (docs/cluster.md, "The device boundary"):

* The main device creates a per-cluster CA (EC P-256). Its key is written with mode 0600 into
  the cluster directory and never leaves the device; peers only ever see the CA *certificate*
  and its SHA-256 fingerprint (shown at accept time and bound into the accept hash).
* A worker device runs :func:`make_csr` itself; its private key never leaves it. The main
  device signs the CSR with :func:`sign_csr`, giving a short-lived (default 24 h) cert whose
  subject CN is the device ID and whose only role SAN is ``URI:parallalx:device:<device_id>``.
* The main device issues itself a ``main-client`` cert (the only identity allowed to drive the
  scheduler) and a ``scheduler`` cert. Roles are URI SANs ``parallalx:role:<role>``.
* Revocation is a JSON file in the cluster dir (device IDs and serials), enforced by the
  scheduler's admission layer (see ``scheduler.py``), so it survives restarts; the CA also
  signs a CRL from it (``crl.py``) that every scheduler and worker TLS context checks, so a
  revoked certificate fails the TLS handshake itself.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import ipaddress
import json
import os
import re
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..files import write_private
from ._guard import (
    ROLE_DEVICE,
    ROLE_MAIN_CLIENT,
    ROLE_SCHEDULER,
    URI_CLUSTER_PREFIX,
    URI_DEVICE_PREFIX,
    URI_ROLE_PREFIX,
    PeerIdentity,
    identity_from_peercert,
    normalize_serial,
    peer_identity,
)

__all__ = [
    "CSRError",
    "ClusterCA",
    "ClusterCredentials",
    "RevocationList",
    "PeerIdentity",
    "cert_fingerprint",
    "cert_identity",
    "make_csr",
    "make_security",
    "peer_identity",
    "identity_from_peercert",
    "sign_csr",
    "validate_device_id",
    "write_private",
]

DEFAULT_CERT_TTL = _dt.timedelta(hours=24)
MAIN_CERT_TTL = _dt.timedelta(days=30)
CA_TTL = _dt.timedelta(days=3650)
CLOCK_SKEW = _dt.timedelta(minutes=5)
_DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class CSRError(ValueError):
    """A CSR was refused (bad signature, wrong name, bad key type, revoked device)."""


def validate_device_id(device_id: str) -> str:
    """Device IDs are ASCII ``[A-Za-z0-9._-]``, 1-128 chars (they go into a URI and a CN)."""
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.match(device_id):
        raise ValueError(f"invalid device id {device_id!r:.80}")
    return device_id


def _now() -> _dt.datetime:
    return _dt.datetime.now(tz=_dt.timezone.utc)


def _write_public(path: str | os.PathLike, data: bytes | str) -> None:
    write_private(path, data)
    os.chmod(path, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_fingerprint(cert_pem: bytes | str) -> str:
    """SHA-256 of the DER certificate, lower-case hex."""
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode()
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_identity(cert_pem: bytes | str) -> PeerIdentity:
    """The :class:`PeerIdentity` a peer presenting this certificate gets."""
    if isinstance(cert_pem, str):
        cert_pem = cert_pem.encode()
    cert = x509.load_pem_x509_certificate(cert_pem)
    sans = []
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [("URI", u) for u in ext.get_values_for_type(x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        pass
    cn = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    not_after = cert.not_valid_after_utc.strftime("%b %d %H:%M:%S %Y GMT")
    return identity_from_peercert(
        {
            "subject": ((("commonName", cn[0]),),) if cn else (),
            "subjectAltName": tuple(sans),
            "serialNumber": format(cert.serial_number, "X"),
            "notAfter": not_after,
        }
    )


def make_csr(device_id: str, key_pem: bytes | None = None) -> tuple[bytes, bytes]:
    """On the *worker* device: new EC P-256 key and a CSR naming ``device_id``.

    Returns ``(key_pem, csr_pem)``. Store the key with :func:`write_private`; send only the CSR.
    Renewal passes the worker's current ``key_pem``: the running worker then only has to load
    a new certificate file, never a new key/cert pair that could be read half-updated.
    """
    validate_device_id(device_id)
    if key_pem is None:
        key = _new_key()
    else:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the worker key must be an EC key")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(URI_DEVICE_PREFIX + device_id)]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return _key_pem(key), csr.public_bytes(serialization.Encoding.PEM)


@dataclass
class ClusterCA:
    """The per-cluster CA. ``key`` is only ever loaded on the main device."""

    cluster_id: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    #: where the CA lives; device certificates it signs are recorded there (``issued.json``)
    #: so that revoking a device can list every certificate it holds in the CRL
    cluster_dir: Path | None = None

    CERT_NAME = "ca.crt"
    KEY_NAME = "ca.key"

    # --- persistence ---------------------------------------------------------------------
    @classmethod
    def create(cls, cluster_dir: str | os.PathLike, cluster_id: str | None = None) -> ClusterCA:
        cluster_dir = Path(cluster_dir)
        cluster_id = cluster_id or uuid.uuid4().hex
        validate_device_id(cluster_id)
        key = _new_key()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "parallalx"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"parallalx cluster CA {cluster_id}"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_TTL)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(URI_CLUSTER_PREFIX + cluster_id)]
                ),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        write_private(cluster_dir / cls.KEY_NAME, _key_pem(key))
        _write_public(cluster_dir / cls.CERT_NAME, cert.public_bytes(serialization.Encoding.PEM))
        return cls(cluster_id=cluster_id, cert=cert, key=key, cluster_dir=cluster_dir)

    @classmethod
    def load(cls, cluster_dir: str | os.PathLike) -> ClusterCA:
        cluster_dir = Path(cluster_dir)
        key_path = cluster_dir / cls.KEY_NAME
        mode = key_path.stat().st_mode & 0o777
        if os.name == "posix" and mode & 0o077:
            raise PermissionError(f"{key_path} has mode {oct(mode)}; expected 0600")
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((cluster_dir / cls.CERT_NAME).read_bytes())
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = ext.get_values_for_type(x509.UniformResourceIdentifier)
        cluster_id = next(u for u in uris if u.startswith(URI_CLUSTER_PREFIX))
        return cls(
            cluster_id=cluster_id[len(URI_CLUSTER_PREFIX) :],
            cert=cert,
            key=key,
            cluster_dir=cluster_dir,
        )

    @classmethod
    def load_or_create(cls, cluster_dir: str | os.PathLike) -> ClusterCA:
        if (Path(cluster_dir) / cls.KEY_NAME).exists():
            return cls.load(cluster_dir)
        return cls.create(cluster_dir)

    # --- properties ----------------------------------------------------------------------
    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the CA certificate (DER), hex: what peers pin and the accept hash binds."""
        return hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).hexdigest()

    # --- issuing -------------------------------------------------------------------------
    def _issue(
        self,
        public_key,
        common_name: str,
        uris: list[str],
        ttl: _dt.timedelta,
        ips: list[str] = (),
        dns: list[str] = (),
    ) -> x509.Certificate:
        if ttl <= _dt.timedelta(0):
            raise ValueError("ttl must be positive")
        now = _now()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        san.append(x509.UniformResourceIdentifier(URI_CLUSTER_PREFIX + self.cluster_id))
        san += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        san += [x509.DNSName(d) for d in dns]
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "parallalx"),
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )

    def sign_csr(
        self,
        csr_pem: bytes | str,
        device_id: str,
        ttl: _dt.timedelta | float = DEFAULT_CERT_TTL,
        revocations: RevocationList | None = None,
    ) -> bytes:
        """Sign a worker device's CSR. Refuses a CSR not naming exactly ``device_id``.

        The issued cert carries only what *we* decide (CN = device_id, SAN URI
        ``parallalx:device:<device_id>``, client+server auth, short TTL); nothing else is
        copied from the CSR except its public key.
        """
        validate_device_id(device_id)
        if isinstance(ttl, (int, float)):
            ttl = _dt.timedelta(seconds=ttl)
        if revocations is not None and revocations.is_revoked(device_id=device_id):
            raise CSRError(f"device {device_id} is revoked")
        if isinstance(csr_pem, str):
            csr_pem = csr_pem.encode()
        if len(csr_pem) > 16384:
            raise CSRError("CSR too large")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise CSRError(f"unreadable CSR: {e}") from None
        if not csr.is_signature_valid:
            raise CSRError("CSR signature is invalid")
        pub = csr.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name not in (
            "secp256r1",
            "secp384r1",
        ):
            raise CSRError("CSR key must be EC P-256 or P-384")
        cns = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        if cns != [device_id]:
            raise CSRError(f"CSR subject CN {cns!r:.100} does not name device {device_id}")
        try:
            san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is not None:
            names = list(san)
            expected = x509.UniformResourceIdentifier(URI_DEVICE_PREFIX + device_id)
            if names != [expected]:
                raise CSRError("CSR subjectAltName must be exactly the device URI")
        cert = self._issue(pub, device_id, [URI_DEVICE_PREFIX + device_id], ttl)
        if self.cluster_dir is not None:
            from .crl import IssuedLedger

            IssuedLedger.in_dir(self.cluster_dir).record(cert, device_id)
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_role(
        self,
        role: str,
        ttl: _dt.timedelta = MAIN_CERT_TTL,
        ips: list[str] = (),
        dns: list[str] = (),
    ) -> tuple[bytes, bytes]:
        """Key + cert for one of the main device's own roles (``main-client``, ``scheduler``).

        The key is generated here, on the main device. Returns ``(key_pem, cert_pem)``.
        """
        if role not in (ROLE_MAIN_CLIENT, ROLE_SCHEDULER):
            raise ValueError(f"unknown role {role!r}")
        key = _new_key()
        cert = self._issue(
            key.public_key(), f"parallalx {role}", [URI_ROLE_PREFIX + role], ttl, ips, dns
        )
        return _key_pem(key), cert.public_bytes(serialization.Encoding.PEM)


def sign_csr(
    ca: ClusterCA,
    csr_pem: bytes | str,
    device_id: str,
    ttl: _dt.timedelta | float = DEFAULT_CERT_TTL,
    revocations: RevocationList | None = None,
) -> bytes:
    """Module-level form of :meth:`ClusterCA.sign_csr`."""
    return ca.sign_csr(csr_pem, device_id, ttl=ttl, revocations=revocations)


class RevocationList:
    """Revoked device IDs and certificate serials, persisted as JSON in the cluster dir.

    Only the main device writes it; the scheduler process re-reads it (on change and on the
    ``parallalx_reload_revocations`` RPC). Writes are atomic (temp file + ``os.replace``).
    """

    FILE_NAME = "revoked.json"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.devices: dict[str, dict] = {}
        self.serials: dict[str, dict] = {}
        self._mtime: float | None = None
        self.reload()

    @classmethod
    def in_dir(cls, cluster_dir: str | os.PathLike) -> RevocationList:
        return cls(Path(cluster_dir) / cls.FILE_NAME)

    def reload(self) -> bool:
        """Re-read the file; returns True if it changed since the last read."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            changed = bool(self.devices or self.serials)
            self.devices, self.serials, self._mtime = {}, {}, None
            return changed
        if self._mtime == st.st_mtime_ns:
            return False
        data = json.loads(self.path.read_text() or "{}")
        self.devices = dict(data.get("devices", {}))
        self.serials = {normalize_serial(k): v for k, v in data.get("serials", {}).items()}
        self._mtime = st.st_mtime_ns
        return True

    def _save(self) -> None:
        data = {"version": 1, "devices": self.devices, "serials": self.serials}
        _write_public(self.path, json.dumps(data, indent=1, sort_keys=True))
        self._mtime = self.path.stat().st_mtime_ns

    def revoke_device(self, device_id: str, reason: str = "", serials: list[str] = ()) -> None:
        """Revoke ``device_id`` and, for good, the ``serials`` it was issued (see ``crl.py``:
        they stay revoked when the device is accepted again)."""
        validate_device_id(device_id)
        self.reload()
        now = time.time()
        self.devices[device_id] = {"revoked_at": now, "reason": str(reason)[:200]}
        for serial in serials:
            self.serials.setdefault(
                normalize_serial(serial),
                {"revoked_at": now, "reason": f"device {device_id} revoked"},
            )
        self._save()

    def revoke_serial(self, serial: int | str, reason: str = "") -> None:
        self.reload()
        self.serials[normalize_serial(serial)] = {
            "revoked_at": time.time(),
            "reason": str(reason)[:200],
        }
        self._save()

    def unrevoke_device(self, device_id: str) -> None:
        self.reload()
        if self.devices.pop(device_id, None) is not None:
            self._save()

    def is_revoked(self, device_id: str | None = None, serial: int | str | None = None) -> bool:
        if device_id is not None and device_id in self.devices:
            return True
        if serial is not None and normalize_serial(serial) in self.serials:
            return True
        return False

    def is_identity_revoked(self, ident: PeerIdentity) -> bool:
        return self.is_revoked(device_id=ident.device_id, serial=ident.serial)


@dataclass
class ClusterCredentials:
    """Paths of the main device's TLS material in one cluster directory.

    ``ClusterCredentials.ensure(cluster_dir, hosts)`` creates (or reloads) the CA and issues the
    scheduler and main-client certs, reissuing them when they are missing or near expiry.
    """

    cluster_dir: Path
    cluster_id: str
    ca_fingerprint: str
    ca_file: Path
    scheduler_cert: Path
    scheduler_key: Path
    client_cert: Path
    client_key: Path
    crl_file: Path | None = None

    @classmethod
    def ensure(
        cls,
        cluster_dir: str | os.PathLike,
        hosts: list[str] = ("127.0.0.1",),
        renew_before: _dt.timedelta = _dt.timedelta(days=1),
    ) -> ClusterCredentials:
        cluster_dir = Path(cluster_dir)
        cluster_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(cluster_dir, 0o700)
        ca = ClusterCA.load_or_create(cluster_dir)
        ips, dns = [], []
        for h in hosts:
            try:
                ipaddress.ip_address(h)
                ips.append(h)
            except ValueError:
                if h:
                    dns.append(h)
        for role in (ROLE_SCHEDULER, ROLE_MAIN_CLIENT):
            cert_path = cluster_dir / f"{role}.crt"
            key_path = cluster_dir / f"{role}.key"
            if cert_path.exists() and key_path.exists():
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                fresh = cert.not_valid_after_utc - _now() > renew_before
                same_ca = cert.issuer == ca.cert.subject and _signed_by(cert, ca)
                if fresh and same_ca:
                    continue
            key_pem, cert_pem = ca.issue_role(
                role, ips=ips if role == ROLE_SCHEDULER else [], dns=dns
            )
            write_private(key_path, key_pem)
            _write_public(cert_path, cert_pem)
        from .crl import ensure_crl

        crl_file = ensure_crl(cluster_dir, ca)
        return cls(
            cluster_dir=cluster_dir,
            cluster_id=ca.cluster_id,
            ca_fingerprint=ca.fingerprint,
            ca_file=cluster_dir / ClusterCA.CERT_NAME,
            scheduler_cert=cluster_dir / f"{ROLE_SCHEDULER}.crt",
            scheduler_key=cluster_dir / f"{ROLE_SCHEDULER}.key",
            client_cert=cluster_dir / f"{ROLE_MAIN_CLIENT}.crt",
            client_key=cluster_dir / f"{ROLE_MAIN_CLIENT}.key",
            crl_file=crl_file,
        )

    @classmethod
    def from_files(cls, cluster_dir: str | os.PathLike) -> ClusterCredentials:
        """The same paths, read from disk without touching the CA key (scheduler process)."""
        cluster_dir = Path(cluster_dir)
        ca_pem = (cluster_dir / ClusterCA.CERT_NAME).read_bytes()
        cert = x509.load_pem_x509_certificate(ca_pem)
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = ext.get_values_for_type(x509.UniformResourceIdentifier)
        cluster_id = next(u for u in uris if u.startswith(URI_CLUSTER_PREFIX))
        return cls(
            cluster_dir=cluster_dir,
            cluster_id=cluster_id[len(URI_CLUSTER_PREFIX) :],
            ca_fingerprint=cert_fingerprint(ca_pem),
            ca_file=cluster_dir / ClusterCA.CERT_NAME,
            scheduler_cert=cluster_dir / f"{ROLE_SCHEDULER}.crt",
            scheduler_key=cluster_dir / f"{ROLE_SCHEDULER}.key",
            client_cert=cluster_dir / f"{ROLE_MAIN_CLIENT}.crt",
            client_key=cluster_dir / f"{ROLE_MAIN_CLIENT}.key",
            crl_file=cluster_dir / "crl.pem",
        )

    def serial_of(self, role: str) -> str:
        cert = x509.load_pem_x509_certificate((self.cluster_dir / f"{role}.crt").read_bytes())
        return normalize_serial(cert.serial_number)

    def client_security(self, tls_min_version: str | float = 1.2):
        """``Security`` for the main device's Client (the only admin identity)."""
        return make_security(self.ca_file, self.client_cert, self.client_key, tls_min_version)

    def scheduler_security(self, tls_min_version: str | float = 1.2):
        return make_security(self.ca_file, self.scheduler_cert, self.scheduler_key, tls_min_version)


def _signed_by(cert: x509.Certificate, ca: ClusterCA) -> bool:
    try:
        cert.verify_directly_issued_by(ca.cert)
        return True
    except Exception:
        return False


def _tls_version(v: str | float | ssl.TLSVersion) -> ssl.TLSVersion:
    if isinstance(v, ssl.TLSVersion):
        if v < ssl.TLSVersion.TLSv1_2:
            raise ValueError("TLS below 1.2 is not allowed")
        return v
    table = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
    try:
        return table[str(v)]
    except KeyError:
        raise ValueError(f"unsupported TLS version {v!r}; use 1.2 or 1.3") from None


def make_security(
    ca_file: str | os.PathLike,
    cert_file: str | os.PathLike,
    key_file: str | os.PathLike,
    tls_min_version: str | float | ssl.TLSVersion = 1.2,
):
    """``distributed.security.Security`` using one cert/key for every Dask role.

    ``require_encryption=True`` makes ``tcp://`` listeners and connections fail; TLS >= 1.2;
    Dask's context already sets ``CERT_REQUIRED`` (mutual TLS). Each process holds exactly one
    identity (scheduler, main client, or a device's worker), so all roles share it.
    """
    from distributed.security import Security

    ca, cert, key = str(ca_file), str(cert_file), str(key_file)
    return Security(
        require_encryption=True,
        tls_ca_file=ca,
        tls_client_cert=cert,
        tls_client_key=key,
        tls_scheduler_cert=cert,
        tls_scheduler_key=key,
        tls_worker_cert=cert,
        tls_worker_key=key,
        tls_min_version=_tls_version(tls_min_version),
    )


ROLE_NAMES = (ROLE_DEVICE, ROLE_MAIN_CLIENT, ROLE_SCHEDULER)
