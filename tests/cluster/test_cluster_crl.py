"""Revocation at the TLS handshake (the cluster CRL) and automatic certificate renewal.

Real scheduler and worker processes, real certificates; the handshakes are made with ``ssl``
directly, so what is tested is OpenSSL's verdict, not Dask's admission layer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import socket
import ssl
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
from cluster_helpers import wait_until
from cryptography import x509
from distributed.comm import get_address_host_port
from distributed.core import rpc

from parallalx_jupyter.cluster import (
    ClusterCA,
    ClusterCredentials,
    RevocationList,
    SchedulerProcess,
    crl,
    make_csr,
    sign_csr,
    write_private,
)
from parallalx_jupyter.cluster._guard import DENIED_MARKER
from parallalx_jupyter.cluster._livetls import VerifyFailed, verify_own_certificate
from parallalx_jupyter.cluster.crl import read_crl
from parallalx_jupyter.local_device import free_port, wait_for

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(240)


def _handshake(address: str, cert_file: str, key_file: str, ca_file: str) -> dict:
    """Open a raw TLS connection to a Dask listener as ``cert_file``; read the first bytes.

    With TLS 1.3 the server checks the client certificate after the client's side of the
    handshake is done, so its verdict ("certificate revoked" alert) arrives with the first
    read; a server that accepts sends Dask's handshake message. Returns the server's cert.
    """
    host, port = get_address_host_port(address)
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.check_hostname = False
    ctx.verify_flags &= ~ssl.VERIFY_X509_STRICT
    ctx.load_cert_chain(cert_file, key_file)
    with socket.create_connection((host, port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            data = tls.recv(64)
            assert data, "the server closed the connection without a TLS alert"
            return tls.getpeercert()


async def _handshake_as(address: str, creds: dict) -> dict:
    return await asyncio.to_thread(
        _handshake, address, creds["cert_file"], creds["key_file"], creds["ca_file"]
    )


async def _refused_as_revoked(address: str, creds: dict) -> bool:
    """True when the handshake fails with "certificate revoked"; False when it succeeds or
    nothing listens yet; any other TLS error fails the test."""
    try:
        await _handshake_as(address, creds)
    except ssl.SSLError as err:
        assert "certificate revoked" in str(err), err
        return True
    except ConnectionRefusedError:
        return False
    return False


def test_crl_lists_every_certificate_of_a_revoked_device(tmp_path):
    """No processes: what the CA signs, and what a worker accepts from a push."""
    creds = ClusterCredentials.ensure(tmp_path / "c")
    ca = ClusterCA.load(tmp_path / "c")
    files = {}
    for name, device in (("a1", "DEVA"), ("a2", "DEVA"), ("b", "DEVB")):
        key, csr = make_csr(device)
        write_private(tmp_path / f"{name}.key", key)
        write_private(tmp_path / f"{name}.crt", sign_csr(ca, csr, device))
        files[name] = (str(tmp_path / f"{name}.crt"), str(tmp_path / f"{name}.key"))
    serial = {n: _cert(Path(f[0])).serial_number for n, f in files.items()}
    first = read_crl(creds.crl_file)
    assert first is not None and first[0] == 1 and len(first[1]) == 0

    crl.revoke_device(tmp_path / "c", "DEVA")
    number, listed = read_crl(creds.crl_file)
    assert number == 2 and {r.serial_number for r in listed} == {serial["a1"], serial["a2"]}
    assert listed.is_signature_valid(ca.cert.public_key())
    assert listed.last_update_utc > first[1].last_update_utc  # the newest list wins
    assert listed.next_update_utc == ca.cert.not_valid_after_utc
    ca_file, crl_file = str(creds.ca_file), str(creds.crl_file)
    assert verify_own_certificate(ca_file, *files["a2"], crl_file) is False  # revoked
    assert verify_own_certificate(ca_file, *files["b"], crl_file) is True

    # accepting the device again does not bring its old certificates back
    RevocationList.in_dir(tmp_path / "c").unrevoke_device("DEVA")
    assert {r.serial_number for r in read_crl(crl.write_crl(tmp_path / "c"))[1]} == {
        serial["a1"], serial["a2"]}

    # a CRL signed by another CA is refused before it could break every handshake
    ClusterCredentials.ensure(tmp_path / "other")
    with pytest.raises(VerifyFailed):
        verify_own_certificate(ca_file, *files["b"], str(tmp_path / "other" / "crl.pem"))


async def test_revoked_certificate_fails_the_tls_handshake_everywhere(harness):
    sp = await harness.scheduler()
    a, b = harness.device_credentials("DEVA"), harness.device_credentials("DEVB")
    c = harness.device_credentials("DEVC")  # accepted, never revoked, no worker running
    ws_a = await harness.worker(sp, a)
    ws_b = await harness.worker(sp, b, listen_port=free_port())
    addr_a, addr_b = ws_a.status()["address"], ws_b.status()["address"]

    client = await sp.client()
    try:
        x = client.submit(lambda: 20, workers=[addr_b], pure=False)
        assert await x == 20
        sec_a = harness.security(a).get_connection_args("worker")

        # before: A's certificate completes the handshake, and A reaches B's worker (ping is
        # what one device may call on another's worker; admission refuses it B's data)
        for address in (sp.address, addr_b):
            assert await _handshake_as(address, a)
        async with rpc(addr_b, connection_args=sec_a, timeout=5) as r:
            assert await r.ping() == b"pong"

        t0 = time.perf_counter()
        await sp.revoke_device("DEVA", reason="stopped sharing")
        # the scheduler refuses A's certificate at the handshake...
        assert await _refused_as_revoked(sp.address, a)
        # ...and so does B's worker, on another device, once the scheduler pushed the CRL
        await wait_until(lambda: _refused_as_revoked(addr_b, a), 10, 0.2)
        print(f"revoke -> B's worker refuses A's handshake: {time.perf_counter() - t0:.2f} s")
        # A's worker can no longer reach B's at all: no op, no data, no handshake
        for op in ("get_data", "ping"):
            with pytest.raises(OSError):
                async with rpc(addr_b, connection_args=sec_a, timeout=5) as r:
                    await getattr(r, op)(keys=[x.key]) if op == "get_data" else await r.ping()
        assert "certificate revoked" in ws_b.spec.log_path.read_text()
        # an unrevoked device is not affected, and neither is the cluster
        assert await _handshake_as(sp.address, c) and await _handshake_as(addr_b, c)
        assert await client.submit(lambda v: v + 1, x, workers=[addr_b], pure=False) == 21
        del x
        # only the scheduler or the main device may push a revocation list to a worker
        sec_c = harness.security(c).get_connection_args("worker")
        async with rpc(addr_b, connection_args=sec_c, timeout=5) as r:
            with pytest.raises(PermissionError, match=DENIED_MARKER):
                await getattr(r, "parallalx-crl")(crl="x", number=10**9)
    finally:
        await client.close()
    await wait_until(lambda: "DEVA" not in sp.read_state()["workers"], 5)
    await ws_a.supervisor.wait_for("refused", 20)
    assert addr_a not in str(sp.read_state()["workers"])

    # restarts: B's worker restarts while the scheduler is down (it loads the CRL it kept),
    # then the scheduler restarts from its directory
    await sp.stop()
    await ws_b.restart()
    await wait_until(lambda: _refused_as_revoked(addr_b, a), 30, 0.3)
    assert await _handshake_as(addr_b, c)
    sp2 = SchedulerProcess.from_cluster_dir(sp.config.cluster_dir, backoff_initial=0.2)
    harness.schedulers.append(sp2)
    await sp2.start()
    assert await _refused_as_revoked(sp2.address, a)
    assert await _handshake_as(sp2.address, c)
    await ws_b.wait_joined(30)
    assert await _refused_as_revoked(addr_b, a)


def _keep(creds: dict, where) -> dict:
    """A copy of a device's credentials (the harness writes each device's to one place)."""
    where.mkdir(parents=True)
    kept = dict(creds)
    for name in ("cert_file", "key_file", "ca_file"):
        kept[name] = str(shutil.copy(creds[name], where))
    return kept


async def test_revoking_a_device_revokes_every_certificate_it_was_issued(harness, tmp_path):
    sp = await harness.scheduler()
    old = _keep(harness.device_credentials("DEVA"), tmp_path / "old")
    # a second certificate of the same device
    older = _keep(harness.device_credentials("DEVA"), tmp_path / "older")
    await sp.revoke_device("DEVA")
    for creds in (old, older):
        assert await _refused_as_revoked(sp.address, creds)
    # accepting the device again issues a new certificate; the old ones stay revoked
    sp.revocations.unrevoke_device("DEVA")
    new = harness.device_credentials("DEVA")
    assert await _handshake_as(sp.address, new)
    assert await _refused_as_revoked(sp.address, old)
    await sp.revoke_serial(x509.load_pem_x509_certificate(
        open(new["cert_file"], "rb").read()).serial_number)
    assert await _refused_as_revoked(sp.address, new)


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _lifetime(cert: x509.Certificate) -> float:
    # not_valid_before is back-dated by 5 minutes for clock skew between devices
    return (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() - 300


def _workers_by_device(main) -> dict[str, str]:
    return {w["device_id"]: w["address"] for w in main.api("GET", "cluster")["workers"]}


async def test_certificates_renew_before_they_expire(make_device):
    """Lifetime 30 s (the shortest allowed): both the other device's worker and the main
    device's own worker get a new certificate over the pairing channel / from the local CA
    before theirs runs out, and stay in the cluster (same process, same address) well past
    the first certificate's end."""
    a = make_device("alpha", env={"PARALLALX_CLUSTER_CERT_TTL": "30"})
    b = make_device("bravo")
    a_id, b_id = a.api("GET", "device")["id"], b.api("GET", "device")["id"]
    sent = a.api("POST", "invitations", {"url": b.peer_url, "asks": {"nthreads": 1}})
    shown = b.api("GET", f"requests/{sent['id']}")
    b.api("POST", f"requests/{sent['id']}/accept", {"shown_hash": shown["shown_hash"]})
    a.api("POST", "cluster/add-self", {"nthreads": 1})
    wait_for(lambda: {a_id, b_id} <= set(_workers_by_device(a)), 60, 0.2)
    before = _workers_by_device(a)
    certs = {
        a_id: a.home / "state" / "workers" / a_id / "worker.crt",
        b_id: b.home / "state" / "workers" / a_id / "worker.crt",
    }
    first = {dev: _cert(path) for dev, path in certs.items()}
    for cert in first.values():
        assert _lifetime(cert) <= 31, _lifetime(cert)
    issued = min(c.not_valid_before_utc for c in first.values()) + dt.timedelta(minutes=5)

    cluster_dir = a.home / "state" / "cluster"
    main_creds = {"cert_file": str(cluster_dir / "main-client.crt"),
                  "key_file": str(cluster_dir / "main-client.key"),
                  "ca_file": str(cluster_dir / "ca.crt")}
    now = dt.datetime.now(dt.timezone.utc)
    await asyncio.sleep(max(0.0, (issued + dt.timedelta(seconds=48) - now).total_seconds()))

    assert _workers_by_device(a) == before  # never removed, never re-registered
    sched = SchedulerProcess.from_cluster_dir(cluster_dir)
    client = await sched.client()
    try:
        for dev, address in before.items():
            current = _cert(certs[dev])
            assert current.serial_number != first[dev].serial_number, f"{dev} not renewed"
            assert current.not_valid_after_utc > dt.datetime.now(dt.timezone.utc)
            # new connections get the renewed certificate
            peer = await _handshake_as(address, main_creds)
            assert int(peer["serialNumber"], 16) == current.serial_number
            assert await client.submit(lambda: "still here", workers=[address],
                                       pure=False) == "still here"
    finally:
        await client.close()
    log = (cluster_dir / "scheduler.log").read_text()
    assert "revoked/expired" not in log
