"""Live TLS material for a Dask process: the cluster's CRL and a renewed certificate, applied
to the connections the process makes and accepts from now on, without a restart.

Why this works the way it does
------------------------------
Every TLS context a ``distributed`` process uses is made by its ``Security`` object
(``get_listen_args`` for the listener, ``get_connection_args`` for the ``rpc`` pool, the
worker's batched stream to the scheduler, ...), once, and then kept: tornado's ``TCPServer``
wraps each accepted socket with the *same* ``SSLContext`` and every outgoing connection reuses
the one in ``connection_args``. :class:`LiveTLS` records each context its ``Security`` hands
out and loads new material *into those objects*:

* a newer CRL (``load_verify_locations(cafile=...)``; CPython's ``cadata`` takes certificates
  only). OpenSSL keeps every CRL it was given and, among the CRLs of one issuer that are
  currently valid, uses the one with the latest ``lastUpdate`` (``x509_vfy.c: get_crl_sk``),
  so a newer list - also one that un-lists a serial - takes effect on the next handshake.
  The CA side (``crl.py``) makes every ``lastUpdate`` strictly later than the last one and
  back-dates it by the clock-skew allowance. With ``VERIFY_CRL_CHECK_LEAF`` a peer's
  certificate is refused when it is listed *and* when no valid CRL of its issuer is loaded,
  so the flag is only set once a CRL is;
* a renewed certificate (``load_cert_chain``): new handshakes present it, open connections
  keep the one they were made with.

A CRL or certificate is checked before it is used: an in-memory handshake of this process's
own certificate against the cluster CA and the new CRL (:func:`verify_own_certificate`) fails
on a bad signature, a list that is not valid yet (a clock far behind) or the wrong issuer, so
nothing loaded can make every later handshake fail.

This file imports only the standard library (``distributed`` and ``tornado`` inside
functions): ``worker_main.py`` loads it by path in a worker environment that may not have
``parallalx_jupyter`` installed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import tempfile
import weakref
from typing import Any

logger = logging.getLogger("parallalx_jupyter.cluster.livetls")

#: First line of a CRL file parallalx writes: the CRL number, readable without an ASN.1
#: parser (OpenSSL skips text before ``-----BEGIN``).
CRL_NUMBER_PREFIX = "parallalx-crl-number:"
CRL_OP = "parallalx-crl"
MAX_CRL_BYTES = 1 << 20
X509_V_ERR_CERT_REVOKED = 23


def crl_number(text: str) -> int | None:
    """The number in a parallalx CRL file's first line, or None."""
    first = text.split("\n", 1)[0].strip()
    if not first.startswith(CRL_NUMBER_PREFIX):
        return None
    try:
        return int(first[len(CRL_NUMBER_PREFIX) :].strip())
    except ValueError:
        return None


def read_crl_number(path: str | os.PathLike | None) -> int | None:
    if not path:
        return None
    try:
        with open(path) as f:
            return crl_number(f.readline())
    except (OSError, UnicodeDecodeError):
        return None


def with_crl_number(pem: str, number: int) -> str:
    """``pem`` (a PEM CRL, any header dropped) with the number line in front."""
    start = pem.find("-----BEGIN X509 CRL-----")
    if start < 0:
        raise ValueError("not a PEM CRL")
    return f"{CRL_NUMBER_PREFIX} {int(number)}\n{pem[start:]}"


class VerifyFailed(ValueError):
    """This process's own certificate does not verify against the CA (and CRL) given."""

    def __init__(self, message: str, verify_code: int | None):
        super().__init__(message)
        self.verify_code = verify_code


def verify_own_certificate(
    ca_file: str, cert_file: str, key_file: str, crl_file: str | None = None
) -> bool:
    """Handshake in memory: a client that trusts ``ca_file`` (and checks ``crl_file``)
    against a server presenting ``cert_file``. Returns False when the CRL is valid and lists
    the certificate (revoked), True when it verifies; raises :class:`VerifyFailed` for
    anything else (bad CRL signature, CRL not yet valid, foreign issuer, key mismatch...)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        server.load_cert_chain(cert_file, key_file)
    except (ssl.SSLError, OSError) as err:
        raise VerifyFailed(f"certificate/key unusable: {err}", None) from None
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    client.verify_flags &= ~ssl.VERIFY_X509_STRICT  # as distributed's own contexts
    client.load_verify_locations(cafile=ca_file)
    if crl_file:
        try:
            client.load_verify_locations(cafile=crl_file)
        except ssl.SSLError as err:
            raise VerifyFailed(f"unreadable CRL: {err}", None) from None
        client.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    bios = [ssl.MemoryBIO() for _ in range(4)]
    c = client.wrap_bio(bios[0], bios[1], server_side=False)
    s = server.wrap_bio(bios[2], bios[3], server_side=True)
    for _ in range(20):
        done = True
        for end in (c, s):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                done = False
            except ssl.SSLCertVerificationError as err:
                if err.verify_code == X509_V_ERR_CERT_REVOKED:
                    return False
                raise VerifyFailed(str(err.verify_message), err.verify_code) from None
            except ssl.SSLError as err:
                raise VerifyFailed(str(err), None) from None
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if done:
            return True
    raise VerifyFailed("in-memory handshake did not finish", None)


class LiveTLS:
    """The TLS material of one process (CA, own cert/key, CRL) and every context made from it."""

    def __init__(self, ca_file: str, cert_file: str, key_file: str):
        self.ca_file, self.cert_file, self.key_file = str(ca_file), str(cert_file), str(key_file)
        self.crl_file: str | None = None
        self.crl_number: int | None = None
        self._contexts: weakref.WeakSet = weakref.WeakSet()

    # --- contexts ------------------------------------------------------------------------
    def adopt(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        """Record ``ctx`` (made by our Security) and give it the current CRL."""
        if self.crl_file:
            ctx.load_verify_locations(cafile=self.crl_file)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        self._contexts.add(ctx)
        return ctx

    @property
    def contexts(self) -> list[ssl.SSLContext]:
        return list(self._contexts)

    def security(self, tls_min_version: Any = "1.2") -> Any:
        """A ``distributed.security.Security`` (``require_encryption``, mutual TLS, one
        identity for every role) whose contexts this object keeps current."""
        from distributed.security import Security

        live = self

        class LiveSecurity(Security):
            def get_connection_args(self, role: str) -> dict:
                args = super().get_connection_args(role)
                live.adopt(args["ssl_context"])
                return args

            def get_listen_args(self, role: str) -> dict:
                args = super().get_listen_args(role)
                live.adopt(args["ssl_context"])
                return args

        if not isinstance(tls_min_version, ssl.TLSVersion):
            tls_min_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[
                str(tls_min_version)
            ]
        cert, key = self.cert_file, self.key_file
        return LiveSecurity(
            require_encryption=True,
            tls_ca_file=self.ca_file,
            tls_client_cert=cert,
            tls_client_key=key,
            tls_scheduler_cert=cert,
            tls_scheduler_key=key,
            tls_worker_cert=cert,
            tls_worker_key=key,
            tls_min_version=tls_min_version,
        )

    # --- new material --------------------------------------------------------------------
    def use_crl(self, path: str | os.PathLike) -> bool:
        """Check the CRL at ``path`` and load it into every context; returns whether this
        process's own certificate is still good (False: the CRL revokes it)."""
        path = str(path)
        good = verify_own_certificate(self.ca_file, self.cert_file, self.key_file, path)
        for ctx in self.contexts:
            ctx.load_verify_locations(cafile=path)
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        self.crl_file = path
        self.crl_number = read_crl_number(path)
        return good

    def use_renewed_certificate(self) -> None:
        """Load ``cert_file``/``key_file`` (renewed in place) into every context."""
        verify_own_certificate(self.ca_file, self.cert_file, self.key_file, self.crl_file)
        for ctx in self.contexts:
            ctx.load_cert_chain(self.cert_file, self.key_file)


async def _revoked_at_handshake(host: str, port: int, ctx: ssl.SSLContext) -> bool:
    """Connect with ``ctx``; True when the peer's verdict is a "certificate revoked" alert
    (TLS 1.3 delivers the server's verdict on the client's first read)."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), 10
        )
        await asyncio.wait_for(reader.read(1), 10)
    except ssl.SSLError as err:
        return "CERTIFICATE_REVOKED" in str(err.reason) or "certificate revoked" in str(err)
    except (OSError, asyncio.TimeoutError):
        return False
    finally:
        if writer is not None:
            writer.close()
    return False


def _mtime(path: str | None) -> int | None:
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


class WorkerTLS:
    """A worker's side of revocation and renewal.

    * ``parallalx-crl`` handler: the scheduler pushes the signed CRL at registration and on
      every change (only the scheduler and the main client may call it: it is no peer op, so
      the admission guard refuses it to devices). A newer list is checked, persisted in
      ``crl_file`` (a restarted worker starts with it) and loaded; comms with the listed
      certificates are aborted, incoming and pooled outgoing alike.
    * every ``poll_interval`` seconds: if ``cert_file`` was renewed on disk (by the device's
      Jupyter server, see ``service.py``), load it, and retire the pooled connections opened
      with the old certificate (the idle ones at once, a busy one when its call returns it to
      the pool), so the scheduler and peers see the new certificate long before the old one
      expires; if ``crl_file`` was replaced on disk, load it.
    """

    def __init__(self, live: LiveTLS, crl_file: str | None, poll_interval: float = 2.0):
        self.live = live
        self.crl_file = crl_file
        self.poll_interval = poll_interval
        self.worker: Any = None
        self._cert_mtime = _mtime(live.cert_file)
        self._crl_mtime: int | None = None
        self._stale: weakref.WeakSet = weakref.WeakSet()
        #: set when the CRL this worker holds revokes its own certificate
        self.own_revoked = False

    def load_initial_crl(self) -> None:
        """Before any context exists: the CRL this worker kept (or was given at join)."""
        if not self.crl_file or not os.path.exists(self.crl_file):
            logger.warning("no CRL yet: peers' certificates are checked once the scheduler "
                           "sends one")
            return
        try:
            good = self.live.use_crl(self.crl_file)
        except VerifyFailed as err:
            logger.error("ignoring the CRL in %s: %s", self.crl_file, err)
            return
        self._crl_mtime = _mtime(self.crl_file)
        if not good:
            self.own_revoked = True
            logger.error("the cluster's CRL revokes this worker's certificate")

    async def scheduler_refusal(
        self, address: str, ctx: ssl.SSLContext, first_delay: float = 1.0, interval: float = 3.0
    ) -> str:
        """Return (a reason) once the scheduler refuses this worker's certificate as revoked
        at the TLS handshake.

        distributed's worker retries a refused connection to the scheduler for as long as it
        waits for one (``death_timeout``), and says nothing of why; the admission guard's
        "revoked" answer never comes, as no message gets through. So while the worker is
        still joining, this probes the scheduler with the same context and reads its verdict.
        """
        hostport = address.split("://", 1)[-1]
        host, _, port = hostport.rpartition(":")
        host = host.strip("[]")
        await asyncio.sleep(first_delay)
        while True:
            if await _revoked_at_handshake(host, int(port), ctx):
                return "the scheduler refused this device's certificate: revoked"
            await asyncio.sleep(interval)

    def install(self, worker: Any) -> None:
        from tornado.ioloop import PeriodicCallback

        self.worker = worker
        worker.handlers[CRL_OP] = self.handle_crl
        pc = PeriodicCallback(self.poll, int(self.poll_interval * 1000))
        worker.periodic_callbacks["parallalx-tls"] = pc
        # A busy pooled comm made with the old certificate is closed when its call hands it
        # back. (Waiting for a poll to find it idle is not enough: the heartbeat's periodic
        # callback can fire on the same loop turns as ours and hold it every time.)
        pool = worker.rpc
        reuse = pool.reuse
        stale = self._stale

        def reuse_unless_stale(addr: str, comm: Any) -> None:
            if comm in stale:
                stale.discard(comm)
                comm.abort()  # the reply is read; ConnectionPool.reuse then frees its slot
                logger.info("retired a pooled connection to %s made with the old certificate",
                            addr)
            reuse(addr, comm)

        pool.reuse = reuse_unless_stale

    # --- the push ------------------------------------------------------------------------
    async def handle_crl(
        self,
        comm: Any = None,
        crl: str | None = None,
        number: int | None = None,
        serials: list | None = None,
        devices: list | None = None,
        **_: Any,
    ) -> dict:
        if not isinstance(crl, str) or len(crl) > MAX_CRL_BYTES or not isinstance(number, int):
            raise ValueError("parallalx-crl needs a PEM CRL and its number")
        current = self.live.crl_number
        if current is not None and number <= current:
            return {"status": "OK", "number": current, "updated": False}
        if not self.crl_file:
            raise ValueError("this worker has no CRL file configured")
        text = with_crl_number(crl, number)
        target = self.crl_file
        directory = os.path.dirname(os.path.abspath(target))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".crl.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            verify_own_certificate(self.live.ca_file, self.live.cert_file,
                                   self.live.key_file, tmp)  # raises if the CRL is unusable
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        good = self.live.use_crl(target)
        self._crl_mtime = _mtime(target)
        logger.info("CRL %d loaded (%d revoked serials)", number, len(serials or ()))
        if not good:
            logger.error("the cluster's CRL revokes this worker's certificate")
        self.drop_revoked({str(s).upper() for s in serials or ()}, set(devices or ()))
        return {"status": "OK", "number": number, "updated": True}

    def drop_revoked(self, serials: set, devices: set) -> None:
        """Abort open comms (both directions) whose peer certificate is now revoked."""
        if not (serials or devices) or self.worker is None:
            return
        from distributed.comm.tcp import TLS

        def revoked(comm: Any) -> bool:
            if not isinstance(comm, TLS):
                return False
            cert = (getattr(comm, "extra_info", None) or {}).get("peercert") or {}
            serial = str(cert.get("serialNumber", "")).lstrip("0").upper()
            uris = [v for k, v in cert.get("subjectAltName", ()) if k == "URI"]
            return serial in serials or any(
                u.startswith("parallalx:device:") and u.split(":", 2)[2] in devices for u in uris
            )

        incoming = getattr(self.worker, "_comms", {}) or {}
        for comm in list(incoming):
            if revoked(comm):
                logger.warning("aborting a comm of a revoked certificate from %s",
                               getattr(comm, "peer_address", "?"))
                comm.abort()
        pool = self.worker.rpc
        for table in (pool.available, pool.occupied):
            for addr, comms in list(table.items()):
                if any(revoked(c) for c in comms):
                    pool.remove(addr)

    # --- polling -------------------------------------------------------------------------
    def poll(self) -> None:
        try:
            mtime = _mtime(self.live.cert_file)
            if mtime is not None and mtime != self._cert_mtime:
                self._cert_mtime = mtime
                self._renewed()
            mtime = _mtime(self.crl_file)
            if mtime is not None and mtime != self._crl_mtime:
                self._crl_mtime = mtime
                number = read_crl_number(self.crl_file)
                current = self.live.crl_number
                if current is None or (number is not None and number > current):
                    self.live.use_crl(self.crl_file)
                    logger.info("CRL %s loaded from %s", number, self.crl_file)
            self._flush_stale()
        except Exception:
            logger.exception("reloading TLS material failed; keeping what is loaded")

    def _renewed(self) -> None:
        try:
            self.live.use_renewed_certificate()
        except VerifyFailed as err:
            logger.error("not using the new certificate in %s: %s", self.live.cert_file, err)
            return
        pool = self.worker.rpc if self.worker is not None else None
        if pool is not None:
            for table in (pool.available, pool.occupied):
                for comms in table.values():
                    self._stale.update(comms)
        logger.info("renewed certificate loaded; new connections use it (%d pooled "
                    "connections to renew)", len(self._stale))
        self._flush_stale()

    def _flush_stale(self) -> None:
        """Close idle pooled comms that were opened with the previous certificate (busy ones
        are closed on a later poll, once they are idle again)."""
        if not self._stale or self.worker is None:
            return
        from tornado.ioloop import IOLoop

        pool = self.worker.rpc
        closed = 0
        for comms in pool.available.values():
            for comm in [c for c in comms if c in self._stale]:
                comms.discard(comm)
                self._stale.discard(comm)
                IOLoop.current().add_callback(comm.close)
                pool.semaphore.release()  # as ConnectionPool.collect does
                closed += 1
        for comm in list(self._stale):
            if comm.closed():
                self._stale.discard(comm)
        if closed:
            logger.info("closed %d idle pooled connection(s) made with the old certificate "
                        "(%d busy ones left)", closed, len(self._stale))


__all__ = [
    "CRL_NUMBER_PREFIX",
    "CRL_OP",
    "LiveTLS",
    "VerifyFailed",
    "WorkerTLS",
    "crl_number",
    "read_crl_number",
    "verify_own_certificate",
    "with_crl_number",
]
