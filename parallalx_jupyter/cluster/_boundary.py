"""The pickle boundary: nothing a device sends reaches an unpickler in this process.

Why it sits where it does
-------------------------
distributed decodes a message in ``protocol.core.loads``, called from ``comm.utils.from_frames``
inside ``TCP.read``. That decoder *always* unpickles ``__Pickled__`` sub-frames (``ToPickle``),
and, when the comm deserializes, runs the ``pickle``/``cloudpickle``/``dask`` deserializers of
``__Serialized__`` sub-frames (the ``dask`` family unpickles the type named in its header). So a
check on the decoded message (what an admission guard on ``comm.read`` sees) comes too late: the
code already ran. This module checks the raw frames *before* ``from_frames`` decodes them, for
every TLS comm whose peer certificate names another device, incoming and outgoing alike.

How
---
:func:`install` replaces ``TLS.read`` (one class: every TLS comm of the process, whether the
listener accepted it or ``connect()`` opened it) and ``distributed.comm.tcp.from_frames`` (the
module global ``TCP.read`` calls). The read wrapper asks the process's ``mode_for(comm)``
(computed once per comm from its verified peer certificate) and, for a device peer, sets a
context variable that the ``from_frames`` wrapper reads: both run in the same task, so no other
comm's read can see it. Modes:

* ``None``: trusted (the scheduler, the main device's client, this device's own workers);
* :data:`REFUSE`: the frames may hold plain msgpack data only. ``__Pickled__`` sub-frames,
  ``__Enum__`` references, inline ``__Serialized__`` maps and ``__Serialized__`` sub-frames
  whose header names any serializer but ``msgpack`` (collections of msgpack items included)
  make the read raise :class:`FrameRefused` (a ``CommClosedError``: distributed then treats
  the comm as broken) and abort the comm;
* :data:`SANITIZE` (main-device processes: the scheduler and every client parallalx opens):
  the same structural refusals, but ``__Serialized__`` sub-frames are decoded *as opaque
  bytes* whatever the comm asked for; the message then goes through the process's
  ``sanitize(msg, comm)`` hook, which replaces every one that could run code (a pickled error
  becomes an exception rebuilt from its text, a pickled result a refusal; see
  ``sanitize.py``), and only then, on a comm that deserializes, are the remaining msgpack
  sub-frames (and the hook's own, locally made ones) deserialized.

Honest workers serialize what they hand out with msgpack first (:data:`SAFE_FIRST_SERIALIZERS`,
used by the guarded worker's ``get_data``), so plain-data results pass the boundary unchanged.

This file imports only the standard library, ``msgpack`` and ``distributed``: ``worker_main.py``
loads it by path in a worker environment that may not have ``parallalx_jupyter`` installed.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from typing import Any

import msgpack
from distributed.comm import tcp
from distributed.comm.core import CommClosedError

logger = logging.getLogger("parallalx_jupyter.cluster.boundary")

REFUSE = "refuse"
SANITIZE = "sanitize"

#: The only serializer whose deserializer cannot run code.
SAFE_SERIALIZERS = frozenset({"msgpack"})
SAFE_COLLECTIONS = frozenset({"tuple", "list", "set", "dict"})
#: What an honest worker offers first when it hands data out: plain data travels as msgpack.
SAFE_FIRST_SERIALIZERS = ["msgpack", "dask", "pickle"]
_MAX_HEADER_DEPTH = 32

# distributed's msgpack options (protocol.utils.msgpack_opts), repeated so the scan decodes
# exactly as the real decoder does.
_MSGPACK_OPTS = {"strict_map_key": False, "raw": False}

ModeFor = Callable[[Any], "str | None"]
Sanitize = Callable[[Any, Any], Any]


class FrameRefused(CommClosedError):
    """A device sent something that could run code when decoded; the comm is aborted."""


_check: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "parallalx_frame_check", default=None
)
_installed: dict[str, Any] = {}


def header_is_safe(header: Any, depth: int = 0) -> bool:
    """True if deserializing a ``__Serialized__`` sub-frame with this header runs no pickle."""
    if not isinstance(header, dict) or depth > _MAX_HEADER_DEPTH:
        return False
    if "is-collection" in header:
        subs = header.get("sub-headers")
        return (
            header.get("type-serialized") in SAFE_COLLECTIONS
            and isinstance(subs, (list, tuple))
            and all(header_is_safe(s, depth + 1) for s in subs)
        )
    return header.get("serializer") in SAFE_SERIALIZERS


def serializer_names(header: Any, depth: int = 0) -> set[str]:
    """Every serializer a (possibly nested) sub-frame header names, for messages."""
    if not isinstance(header, dict) or depth > _MAX_HEADER_DEPTH:
        return {"?"}
    if "is-collection" in header:
        out: set[str] = set()
        for s in header.get("sub-headers") or ():
            out |= serializer_names(s, depth + 1)
        return out
    return {str(header.get("serializer"))[:40]}


def unsafe_reason(frames: list, serialized_ok: bool) -> str | None:
    """Why these frames must not be decoded, or None. Never unpickles anything.

    ``serialized_ok``: the frames will be decoded by :func:`decode_opaque`, which keeps
    ``__Serialized__`` and ``__Pickled__`` sub-frames as opaque bytes for the sanitize hook, so
    only their *presence* is allowed; a caller that deserializes gets ``False`` and each
    sub-frame's header must name safe serializers only.
    """
    if not frames:
        return None
    problems: list[str] = []

    def sub_header(offset: Any) -> Any:
        if isinstance(offset, bool) or not isinstance(offset, int) or not 0 < offset < len(
            frames
        ):
            problems.append("a sub-frame reference out of range")
            return None
        try:
            return msgpack.loads(frames[offset], object_hook=hook, use_list=False, **_MSGPACK_OPTS)
        except Exception:
            problems.append("an unreadable sub-frame header")
            return None

    def hook(obj: dict) -> dict:
        if "__Pickled__" in obj:
            if not serialized_ok:
                problems.append("a pickled sub-frame")
        elif "__Enum__" in obj:
            problems.append("an enum reference")
        elif "__Serialized__" in obj:
            offset = obj["__Serialized__"]
            if offset is True or "data" in obj:
                problems.append("an inline serialized object")
            else:
                header = sub_header(offset)
                if header is not None and not serialized_ok and not header_is_safe(header):
                    names = ", ".join(sorted(serializer_names(header)))
                    problems.append(f"data serialized with {names}")
        return obj

    try:
        msgpack.loads(frames[0], object_hook=hook, use_list=False, **_MSGPACK_OPTS)
    except Exception as e:
        return f"an undecodable message ({type(e).__name__})"
    return problems[0] if problems else None


def install(mode_for: ModeFor, sanitize: Sanitize | None = None) -> None:
    """Put the boundary in front of every TLS comm of this process (idempotent).

    ``mode_for(comm)`` returns None (trusted), :data:`REFUSE` or :data:`SANITIZE`; it is asked
    once per comm. A later call replaces the policy (tests run several roles in one process).
    """
    _installed["mode_for"] = mode_for
    _installed["sanitize"] = sanitize
    if _installed.get("patched"):
        return
    original_read = tcp.TLS.read
    original_from_frames = tcp.from_frames

    async def checked_from_frames(
        frames: list,
        deserialize: bool = True,
        deserializers: Any = None,
        allow_offload: bool = True,
    ) -> Any:
        mode = _check.get()
        if mode is not None:
            reason = unsafe_reason(frames, serialized_ok=mode == SANITIZE)
            if reason is not None:
                raise FrameRefused(f"parallalx refused {reason} from a device")
            if mode == SANITIZE:
                try:
                    return decode_opaque(frames)  # sanitized, then deserialized: bounded_read
                except Exception as e:
                    raise FrameRefused(f"parallalx refused an undecodable message: {e}") from None
        return await original_from_frames(
            frames,
            deserialize=deserialize,
            deserializers=deserializers,
            allow_offload=allow_offload,
        )

    async def bounded_read(self: Any, deserializers: Any = None) -> Any:
        mode = comm_mode(self)
        if mode is None:
            return await original_read(self, deserializers)
        token = _check.set(mode)
        try:
            msg = await original_read(self, deserializers)
        except FrameRefused as e:
            logger.warning("closing the comm with %s: %s", _peer(self), e)
            self.abort()
            raise
        finally:
            _check.reset(token)
        if mode == SANITIZE:
            msg = _installed["sanitize"](msg, self)
            if getattr(self, "deserialize", True):
                msg = deserialize_nested(msg, deserializers)
        return msg

    tcp.from_frames = checked_from_frames
    tcp.TLS.read = bounded_read  # type: ignore[method-assign]
    _installed["patched"] = True


def comm_mode(comm: Any) -> str | None:
    """The boundary mode of one comm (cached on it: the peer certificate cannot change)."""
    mode = getattr(comm, "_parallalx_mode", "unset")
    if mode == "unset":
        mode_for = _installed.get("mode_for")
        try:
            mode = mode_for(comm) if mode_for is not None else None
        except Exception:  # never trust on error
            logger.exception("could not classify a comm's peer; refusing pickles from it")
            mode = REFUSE
        if mode == SANITIZE and _installed.get("sanitize") is None:
            mode = REFUSE  # nothing here can make a device's sub-frames safe
        comm._parallalx_mode = mode
    return mode


def decode_opaque(frames: list) -> Any:
    """distributed's ``protocol.core.loads(frames, deserialize=False)``, except that a
    ``__Pickled__`` sub-frame (which ``loads`` always unpickles) stays opaque too: it becomes a
    ``Serialized`` whose header says ``pickle``, so the sanitize hook replaces it like any
    other. Only run on frames :func:`unsafe_reason` let through (no enum, no inline object)."""
    from distributed.protocol.serialize import Serialized

    def sub(offset: int) -> tuple[dict, list]:
        header = msgpack.loads(frames[offset], use_list=False, **_MSGPACK_OPTS)
        n = int(header["num-sub-frames"])
        return header, frames[offset + 1 : offset + 1 + n]

    def hook(obj: dict) -> Any:
        offset = obj.get("__Serialized__", 0)
        if offset:
            return Serialized(*sub(offset))
        offset = obj.get("__Pickled__", 0)
        if offset:
            return Serialized({"serializer": "pickle", "parallalx-was": "ToPickle"}, [])
        if "__Set__" in obj:
            return set(obj["as-list"])
        return obj

    return msgpack.loads(frames[0], object_hook=hook, use_list=False, **_MSGPACK_OPTS)


def deserialize_nested(msg: Any, deserializers: Any = None, depth: int = 0) -> Any:
    """Deserialize the ``Serialized`` left in a message decoded opaquely, as ``loads`` would
    have (decompress, merge, deserialize); called only after the sanitize hook."""
    from distributed.protocol.compression import decompress
    from distributed.protocol.serialize import Serialized, merge_and_deserialize

    if depth > 64:
        return msg
    if isinstance(msg, Serialized):
        frames = msg.frames
        if "compression" in msg.header:
            frames = decompress(msg.header, frames)
        return merge_and_deserialize(msg.header, frames, deserializers=deserializers)
    if isinstance(msg, dict):
        return {k: deserialize_nested(v, deserializers, depth + 1) for k, v in msg.items()}
    if isinstance(msg, list):
        return [deserialize_nested(v, deserializers, depth + 1) for v in msg]
    if isinstance(msg, tuple):
        return tuple(deserialize_nested(v, deserializers, depth + 1) for v in msg)
    return msg


def _peer(comm: Any) -> str:
    try:
        return str(comm.peer_address)[:80]
    except Exception:
        return "?"


__all__ = [
    "REFUSE",
    "SAFE_FIRST_SERIALIZERS",
    "SANITIZE",
    "FrameRefused",
    "comm_mode",
    "header_is_safe",
    "install",
    "unsafe_reason",
]
