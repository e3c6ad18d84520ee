"""Per-cluster CA, CSR signing and revocation list (no processes)."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from parallalx_jupyter.cluster import (
    ClusterCA,
    ClusterCredentials,
    CSRError,
    RevocationList,
    SchedulerConfig,
    cert_identity,
    make_csr,
    sign_csr,
)
from parallalx_jupyter.cluster.worker import WorkerSpec

DEV = "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43UOV3HO6DZPIYTEMZUGU3A"  # base32, like identity.py


def test_ca_key_private_and_fingerprint(tmp_path):
    ca = ClusterCA.create(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    assert len(ca.fingerprint) == 64 and int(ca.fingerprint, 16) >= 0
    again = ClusterCA.load(tmp_path)
    assert again.fingerprint == ca.fingerprint and again.cluster_id == ca.cluster_id
    os.chmod(tmp_path / "ca.key", 0o644)
    with pytest.raises(PermissionError):
        ClusterCA.load(tmp_path)


def test_sign_csr_names_device_and_is_short_lived(tmp_path):
    ca = ClusterCA.create(tmp_path)
    key_pem, csr_pem = make_csr(DEV)
    assert b"PRIVATE KEY" in key_pem and b"PRIVATE" not in csr_pem
    cert_pem = sign_csr(ca, csr_pem, DEV)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == DEV
    life = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(hours=23) < life <= dt.timedelta(hours=24)
    ident = cert_identity(cert_pem)
    assert (ident.role, ident.device_id, ident.cluster_id) == ("device", DEV, ca.cluster_id)
    short = x509.load_pem_x509_certificate(sign_csr(ca, csr_pem, DEV, ttl=600))
    assert short.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < dt.timedelta(minutes=11)


def test_sign_csr_refuses_wrong_or_forged_names(tmp_path):
    ca = ClusterCA.create(tmp_path)
    _, csr_other = make_csr("OTHERDEVICE")
    with pytest.raises(CSRError, match="does not name"):
        sign_csr(ca, csr_other, DEV)
    # CN right, but the SAN asks for the main-client role: refused
    key = ec.generate_private_key(ec.SECP256R1())
    forged = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEV)]))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("parallalx:role:main-client")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives.serialization import Encoding

    with pytest.raises(CSRError, match="subjectAltName"):
        sign_csr(ca, forged.public_bytes(Encoding.PEM), DEV)
    with pytest.raises(ValueError):
        sign_csr(ca, make_csr(DEV)[1], "bad id with spaces")
    with pytest.raises(CSRError):
        sign_csr(ca, b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", DEV)


def test_revocation_list_persists_and_blocks_signing(tmp_path):
    ca = ClusterCA.create(tmp_path)
    rl = RevocationList.in_dir(tmp_path)
    rl.revoke_device(DEV, reason="stopped sharing")
    rl.revoke_serial(0xABC)
    again = RevocationList.in_dir(tmp_path)
    assert again.is_revoked(device_id=DEV) and again.is_revoked(serial="0abc")
    assert not again.is_revoked(device_id="SOMEONEELSE")
    with pytest.raises(CSRError, match="revoked"):
        sign_csr(ca, make_csr(DEV)[1], DEV, revocations=again)


def test_main_credentials_roles(tmp_path):
    creds = ClusterCredentials.ensure(tmp_path / "c", hosts=["127.0.0.1"])
    client = cert_identity(creds.client_cert.read_bytes())
    sched = cert_identity(creds.scheduler_cert.read_bytes())
    assert (client.role, sched.role) == ("main-client", "scheduler")
    for key in (creds.client_key, creds.scheduler_key):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    # idempotent: the same certs are reused while fresh
    again = ClusterCredentials.ensure(tmp_path / "c", hosts=["127.0.0.1"])
    assert again.serial_of("main-client") == creds.serial_of("main-client")
    sec = creds.client_security()
    assert sec.require_encryption is True
    assert sec.tls_min_version.name == "TLSv1_2"


def test_bind_everything_needs_explicit_opt_in(tmp_path):
    with pytest.raises(ValueError, match="all interfaces"):
        SchedulerConfig(cluster_dir=str(tmp_path), host="0.0.0.0").validate()
    with pytest.raises(ValueError, match="loopback"):
        SchedulerConfig(cluster_dir=str(tmp_path), dashboard_host="10.0.0.1").validate()
    SchedulerConfig(cluster_dir=str(tmp_path), host="0.0.0.0", allow_all_interfaces=True).validate()
    with pytest.raises(ValueError, match="tls://"):
        WorkerSpec("tcp://127.0.0.1:1", DEV, "ca", "crt", "key", str(tmp_path))
    with pytest.raises(ValueError, match="name"):
        WorkerSpec("tls://127.0.0.1:1", DEV, "ca", "crt", "key", str(tmp_path), name="other")
