"""Peer identity and per-message admission for Dask servers (scheduler and workers).

This module is deliberately self-contained: it imports only the standard library (and
``distributed`` lazily, inside functions). ``worker_main.py`` loads it *by file path* in a
worker interpreter that may not have ``parallalx_jupyter`` installed, so it must never import
anything from this package.

How admission works
-------------------
Dask's TLS only checks "signed by the cluster CA". Every incoming connection of a
``distributed.core.Server`` (scheduler or worker) arrives through one entry point,
``Server.handle_comm(comm)``: the listener's callback, stable across distributed releases. The
:class:`GuardMixin` overrides it, reads the peer certificate that the TLS comm already exposes
(``comm.extra_info["peercert"]``, filled by ``distributed.comm.tcp.TLS._read_extra`` from
``SSLSocket.getpeercert()``), turns it into a :class:`PeerIdentity`, and wraps that comm
instance's ``read`` method. Every message the server reads from the comm - first-level RPC
requests (``{"op": ...}`` read by ``Server._handle_comm``) *and* batched stream messages
(lists read by ``Server.handle_stream`` after ``register-worker`` / ``register-client`` /
``connection_stream``) - passes the policy's :meth:`AdmissionPolicy.check` before any handler
sees it. So handler tables that extensions fill in later (queues, variables, shuffle, ...) are
covered too: unknown ops are denied to everyone except the fully trusted roles.

* A denied request is rewritten into ``{"op": DENIED_OP, ...}``; the server's
  :meth:`GuardMixin._parallalx_denied` handler answers it with a ``PermissionError`` that the
  caller's ``rpc`` re-raises (``register-worker`` gets the ``{"status": "error"}`` reply the
  worker expects, so the worker fails to start with :data:`DENIED_MARKER` in its error).
* A denied message inside a stream closes the comm: for a worker stream the scheduler then
  removes that worker.
"""

from __future__ import annotations

import logging
import ssl
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("parallalx_jupyter.cluster.admission")

URI_DEVICE_PREFIX = "parallalx:device:"
URI_ROLE_PREFIX = "parallalx:role:"
URI_CLUSTER_PREFIX = "parallalx:cluster:"
ROLE_DEVICE = "device"
ROLE_MAIN_CLIENT = "main-client"
ROLE_SCHEDULER = "scheduler"
ROLE_UNKNOWN = "unknown"

DENIED_OP = "parallalx-denied"
DENIED_MARKER = "parallalx-admission-denied"
#: Exit status of worker_main when the scheduler refused admission (EX_NOPERM).
EXIT_REFUSED = 77

MAX_ID_LEN = 128


@dataclass(frozen=True)
class PeerIdentity:
    """What the verified peer certificate says about the other end of a comm."""

    role: str
    device_id: str | None = None
    cluster_id: str | None = None
    serial: str | None = None  # upper-case hex, as ssl.getpeercert() gives it
    not_after: float | None = None  # epoch seconds
    common_name: str | None = None

    @property
    def label(self) -> str:
        if self.role == ROLE_DEVICE:
            return f"device:{self.device_id}"
        return self.role

    def expired(self, now: float | None = None) -> bool:
        return self.not_after is not None and (now or time.time()) > self.not_after


UNKNOWN = PeerIdentity(role=ROLE_UNKNOWN)


def normalize_serial(serial: int | str) -> str:
    """Serial number as upper-case hex without leading zeros (ssl's format, normalised)."""
    if isinstance(serial, int):
        return format(serial, "X")
    return format(int(str(serial), 16), "X")


def identity_from_peercert(peercert: dict | None) -> PeerIdentity:
    """Build a :class:`PeerIdentity` from ``ssl.SSLSocket.getpeercert()``'s dict.

    Only URI SANs under ``parallalx:`` give a role; a certificate with none of them (or with
    conflicting ones) is ``unknown`` and gets no rights.
    """
    if not peercert:
        return UNKNOWN
    uris = [v for (k, v) in peercert.get("subjectAltName", ()) if k == "URI"]
    cn = None
    for rdn in peercert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
    serial = peercert.get("serialNumber")
    serial = normalize_serial(serial) if serial else None
    not_after = None
    if peercert.get("notAfter"):
        try:
            not_after = float(ssl.cert_time_to_seconds(peercert["notAfter"]))
        except ValueError:
            not_after = 0.0  # unparsable -> treat as expired
    cluster_id = None
    roles = set()
    device_id = None
    for uri in uris:
        if uri.startswith(URI_DEVICE_PREFIX):
            roles.add(ROLE_DEVICE)
            device_id = uri[len(URI_DEVICE_PREFIX) :]
        elif uri.startswith(URI_ROLE_PREFIX):
            roles.add(uri[len(URI_ROLE_PREFIX) :])
        elif uri.startswith(URI_CLUSTER_PREFIX):
            cluster_id = uri[len(URI_CLUSTER_PREFIX) :]
    if len(roles) != 1:
        return PeerIdentity(role=ROLE_UNKNOWN, serial=serial, common_name=cn)
    role = roles.pop()
    if role not in (ROLE_DEVICE, ROLE_MAIN_CLIENT, ROLE_SCHEDULER):
        return PeerIdentity(role=ROLE_UNKNOWN, serial=serial, common_name=cn)
    if role == ROLE_DEVICE and (not device_id or len(device_id) > MAX_ID_LEN):
        return PeerIdentity(role=ROLE_UNKNOWN, serial=serial, common_name=cn)
    return PeerIdentity(
        role=role,
        device_id=device_id if role == ROLE_DEVICE else None,
        cluster_id=cluster_id,
        serial=serial,
        not_after=not_after,
        common_name=cn,
    )


def peer_identity(comm: Any) -> PeerIdentity:
    """Identity of the peer of a distributed ``Comm`` (``UNKNOWN`` for non-TLS comms).

    ``distributed.comm.tcp.TLS`` stores ``SSLSocket.getpeercert()`` in ``comm.extra_info``;
    we fall back to the live SSL socket if a future release stops doing so.
    """
    peercert = None
    try:
        peercert = (getattr(comm, "extra_info", None) or {}).get("peercert")
    except Exception:  # pragma: no cover - defensive
        peercert = None
    if not peercert:
        try:
            sock = comm.stream.socket
            peercert = sock.getpeercert() if sock is not None else None
        except Exception:
            peercert = None
    return identity_from_peercert(peercert)


class AdmissionDenied(Exception):
    """Raised by a policy to refuse one message."""


@dataclass
class AdmissionPolicy:
    """Base policy: ``trusted`` roles may use every op except ``blocked_ops``.

    Subclasses refine :meth:`check` (the scheduler adds revocation and device ownership).
    ``peer_ops`` are what an admitted *device* may call.
    """

    trusted_roles: frozenset = frozenset({ROLE_MAIN_CLIENT, ROLE_SCHEDULER})
    pinned_serials: dict = field(default_factory=dict)  # role -> set of serials (optional)
    peer_ops: frozenset = frozenset()
    blocked_ops: frozenset = frozenset()
    always_ops: frozenset = frozenset({"close"})

    def connection_reason(self, ident: PeerIdentity) -> str | None:
        """Reason to refuse everything on this connection, or None."""
        if ident.role == ROLE_UNKNOWN:
            return "certificate names no parallalx role"
        if ident.expired():
            return "certificate expired"
        pins = self.pinned_serials.get(ident.role)
        if pins is not None and ident.serial not in pins:
            return f"{ident.role} certificate is not the pinned one"
        return None

    def admitted_before_op_rules(self, ident: PeerIdentity, op: str) -> bool:
        """The checks every policy shares: blocked ops and refused connections raise; always-ops
        and trusted roles are admitted (True); anything else is left to the op rules (False)."""
        if op in self.blocked_ops:
            raise AdmissionDenied(f"op {op!r} is disabled on this server")
        if op in self.always_ops:
            return True
        reason = self.connection_reason(ident)
        if reason:
            raise AdmissionDenied(reason)
        return ident.role in self.trusted_roles

    def check(self, ident: PeerIdentity, op: str, msg: dict, stream: bool) -> None:
        """Raise :class:`AdmissionDenied` if ``ident`` may not send ``msg``."""
        if self.admitted_before_op_rules(ident, op):
            return
        if ident.role == ROLE_DEVICE and op in self.peer_ops:
            return
        raise AdmissionDenied(f"op {op!r} is not allowed for {ident.label}")


class _DeniedStream(Exception):
    pass


class GuardMixin:
    """Mix into a ``distributed`` Server subclass (before the Server class in the MRO).

    The subclass must set ``self._admission`` (an :class:`AdmissionPolicy`) before it starts
    listening. See the module docstring for the mechanism.
    """

    _admission: AdmissionPolicy

    def _guard_init(self, policy: AdmissionPolicy) -> None:
        self._admission = policy
        self._guard_comms: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.handlers[DENIED_OP] = self._parallalx_denied

    # --- the hook ------------------------------------------------------------------------
    def handle_comm(self, comm):  # type: ignore[override]
        try:
            ident = peer_identity(comm)
        except Exception:  # pragma: no cover - defensive: never admit on error
            logger.exception("could not read peer identity; treating as unknown")
            ident = UNKNOWN
        self._guard_comms[comm] = ident
        self._install_filter(comm, ident)
        return super().handle_comm(comm)  # type: ignore[misc]

    def _install_filter(self, comm, ident: PeerIdentity) -> None:
        original_read = comm.read
        guard = self

        async def guarded_read(*args, **kwargs):
            msg = await original_read(*args, **kwargs)
            return guard._filter_message(comm, ident, msg)

        # An instance attribute shadows the class's ``read`` for this comm only.
        comm.read = guarded_read

    def _filter_message(self, comm, ident: PeerIdentity, msg: Any) -> Any:
        if isinstance(msg, dict):
            op = msg.get("op")
            if op is None:
                return msg
            try:
                self._admission.check(ident, op, msg, stream=False)
            except AdmissionDenied as e:
                logger.warning(
                    "admission: refused op %r from %s (%s): %s",
                    _short(op),
                    ident.label,
                    _peer(comm),
                    e,
                )
                if op == "register-worker":
                    self._parallalx_join_refused(ident, str(e))
                return {
                    "op": DENIED_OP,
                    "denied_op": str(op)[:100],
                    "reason": str(e),
                    "reply": True,
                    "close": op in ("register-worker", "register-client", "connection_stream"),
                }
            return msg
        if isinstance(msg, (list, tuple)):
            for m in msg:
                if not isinstance(m, dict) or m.get("op") is None:
                    continue
                op = m["op"]
                try:
                    self._admission.check(ident, op, m, stream=True)
                except AdmissionDenied as e:
                    logger.warning(
                        "admission: refused stream op %r from %s (%s): %s; closing its comm",
                        _short(op),
                        ident.label,
                        _peer(comm),
                        e,
                    )
                    comm.abort()
                    from distributed.comm.core import CommClosedError

                    raise CommClosedError(f"{DENIED_MARKER}: {e}") from None
            return msg
        return msg

    def _parallalx_join_refused(self, ident: PeerIdentity, reason: str) -> None:
        """A worker's registration was refused (the scheduler shows its device why)."""

    def _parallalx_denied(self, denied_op: str = "", reason: str = "", **_: Any) -> Any:
        text = f"{DENIED_MARKER}: {reason}"
        if denied_op == "register-worker":
            # What Worker._register_with_scheduler expects; it raises ValueError(message).
            return {"status": "error", "message": text, "time": time.time()}
        if denied_op == "register-client":
            # What Client._ensure_connected expects; it raises ImportError(error).
            return [{"op": "stream-start", "error": text}]
        try:
            raise PermissionError(text)
        except PermissionError as e:
            try:
                from distributed.core import error_message

                return error_message(e, status="uncaught-error")
            except Exception:  # pragma: no cover - older/newer distributed
                raise

    def comms_of(self, predicate) -> list:
        """Open incoming comms whose identity satisfies ``predicate(ident)``."""
        return [c for c, i in list(self._guard_comms.items()) if predicate(i)]


def _short(op: Any) -> str:
    return str(op)[:60]


def _peer(comm: Any) -> str:
    try:
        return str(comm.peer_address)[:80]
    except Exception:
        return "?"


# Ops a worker accepts from *other devices' workers*: a ping, and ``get_data`` of the inputs of
# a task the scheduler gave that device (checked per call with the scheduler, see
# ``make_guarded_worker_class``; what it receives is plain data only, see ``_boundary.py``).
# Everything else on a worker (compute-task streams, gather, plugin-add, terminate, ...) is
# reserved for the scheduler and the main device's client.
WORKER_PEER_OPS = frozenset({"ping", "get_data"})
#: Scheduler RPC a worker asks before handing data to another device: is it that device's?
MAY_FETCH_OP = "parallalx_may_fetch"
# Handlers that execute caller-supplied code outside the task graph: blocked for everyone.
WORKER_BLOCKED_OPS = frozenset(
    {"run", "run_coroutine", "upload_file", "plugin-add", "plugin-remove"}
)


def boundary_mode_for_worker(own_device_id: str | None) -> Any:
    """The pickle-boundary mode (see ``_boundary.py``) of a worker's comms: trusted with the
    scheduler, the main device's client and this device's own workers; plain data only with
    every other peer."""

    def mode_for(comm: Any) -> str | None:
        ident = peer_identity(comm)
        if ident.role in (ROLE_SCHEDULER, ROLE_MAIN_CLIENT):
            return None
        if ident.role == ROLE_DEVICE and own_device_id and ident.device_id == own_device_id:
            return None
        return "refuse"

    return mode_for


def boundary_mode_for_main(comm: Any) -> str | None:
    """The pickle-boundary mode of a main-device process (scheduler, notebook client): every
    peer but a device is trusted (a client may also talk to a user's own Dask cluster, whose
    certificates name no parallalx role); a device's data is sanitized where the comm keeps
    sub-frames opaque (the scheduler) and refused where it would be deserialized."""
    return "sanitize" if peer_identity(comm).role == ROLE_DEVICE else None


def worker_policy(extra_blocked: frozenset | set = frozenset()) -> AdmissionPolicy:
    return AdmissionPolicy(
        trusted_roles=frozenset({ROLE_MAIN_CLIENT, ROLE_SCHEDULER}),
        peer_ops=WORKER_PEER_OPS,
        blocked_ops=WORKER_BLOCKED_OPS | frozenset(extra_blocked),
    )


def make_guarded_worker_class(
    worker_cls: type,
    policy: AdmissionPolicy,
    safe_first_serializers: tuple[str, ...] = ("msgpack", "dask", "pickle"),
    own_device_id: str | None = None,
) -> type:
    """A ``distributed.Worker`` subclass enforcing ``policy`` on every incoming comm, handing
    out plain data as msgpack (``safe_first_serializers``) and, to another device, only the
    inputs of that device's own tasks."""

    class GuardedWorker(GuardMixin, worker_cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            blocked = set(kwargs.pop("blocked_handlers", None) or ())
            blocked |= set(policy.blocked_ops)
            super().__init__(*args, blocked_handlers=sorted(blocked), **kwargs)
            self._guard_init(policy)

        async def get_data(self, comm, keys, who=None, serializers=None):
            ident = peer_identity(comm)
            if ident.role == ROLE_DEVICE and ident.device_id != own_device_id:
                await self._parallalx_check_fetch(ident, list(keys))
            # msgpack first: plain results (all a parallalx task returns) then pass the main
            # device's pickle boundary; anything else still goes out as Dask would send it.
            return await super().get_data(
                comm, keys=keys, who=who, serializers=list(safe_first_serializers)
            )

        async def _parallalx_check_fetch(self, ident: PeerIdentity, keys: list) -> None:
            """Another device may read only what its own running tasks need: the scheduler,
            which assigned them, says whether ``keys`` are such inputs."""
            try:
                allowed = await getattr(self.scheduler, MAY_FETCH_OP)(
                    device=ident.device_id, keys=keys
                )
            except Exception as e:  # scheduler unreachable: refuse, the fetch is retried
                raise PermissionError(f"{DENIED_MARKER}: could not check the fetch: {e}") from e
            if allowed is not True:
                raise PermissionError(
                    f"{DENIED_MARKER}: device {ident.device_id} may only fetch the inputs of "
                    "its own tasks"
                )

    GuardedWorker.__name__ = "Worker"  # keeps dask config lookups ("distributed.worker.*")
    GuardedWorker.__qualname__ = "Worker"
    return GuardedWorker


def stop_requested(parent_watch: bool) -> Any:
    """An ``asyncio.Event`` set on SIGTERM/SIGINT and, with ``parent_watch``, when the
    controlling process goes away: how the scheduler and worker subprocesses learn to stop."""
    import asyncio
    import os
    import signal

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def _stop(*_: Any) -> None:
        loop.call_soon_threadsafe(stopping.set)

    if os.name == "posix":
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _stop)
    if parent_watch:
        start_parent_watchdog(_stop, grace=10.0)
    return stopping


def start_parent_watchdog(on_parent_gone, grace: float = 10.0) -> None:
    """Call ``on_parent_gone()`` when our stdin reaches EOF (the supervising process died or
    closed the pipe), then hard-exit after ``grace`` seconds if we are still alive.

    Portable (POSIX and Windows): the supervisor gives every child a stdin pipe it never
    writes to; when the supervisor exits - even by SIGKILL - the pipe closes.
    """
    import os
    import sys
    import threading

    def _watch():
        try:
            fd = sys.stdin.fileno()
            while True:
                # os.read on the raw fd: a buffered reader would hold its lock at shutdown.
                if not os.read(fd, 1024):
                    break
        except Exception:
            pass
        try:
            on_parent_gone()
        except Exception:
            pass
        time.sleep(grace)
        _kill_own_group()
        os._exit(70)

    threading.Thread(target=_watch, name="parallalx-parent-watchdog", daemon=True).start()


def _kill_own_group() -> None:
    """Terminate our process group if we lead it (children such as DataLoader workers)."""
    import os
    import signal

    if os.name == "posix":
        try:
            if os.getpgrp() == os.getpid():
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                os.killpg(os.getpgrp(), signal.SIGTERM)
        except OSError:
            pass
