"""What the scheduler does with a device's message before it keeps or forwards any of it.

The scheduler's comms never deserialize (``Scheduler(deserialize=False)``): a ``__Serialized__``
sub-frame stays an opaque ``Serialized`` there, and the pickle boundary (``_boundary.py``) has
already refused every part of a device's message that would be unpickled *on the scheduler*.
What is left are the parts the scheduler hands to the main device's client, which *does*
deserialize them, and a few fields distributed's client unpickles by hand. Each is rewritten
here, from data alone, into something the scheduler built itself:

* a task error (``exception``/``traceback`` beside ``exception_text``/``traceback_text``, as
  ``error_message`` and ``task-erred`` carry them) becomes an exception rebuilt from its text:
  a builtin or parallalx exception class named by the text, with literal arguments read by
  ``ast.literal_eval``, else :class:`DeviceTaskError` holding the text. The class of a
  parallalx error (``UserCodeError``, ``RankInfraError``) survives, so the driver still tells
  "the user's code" from "the device" - a device can only lie about the class name, which runs
  nothing;
* any other ``Serialized`` whose header names a serializer but msgpack (a task result, a
  ``run`` reply) becomes a :class:`RefusedResult`;
* ``task-finished``'s ``type`` (a pickled class the client unpickles) is dropped;
* ``log-event`` on a topic whose client handler unpickles (``warn``) is dropped.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import logging
import re
from typing import Any

from distributed.protocol.serialize import Serialized, serialize

from ._boundary import header_is_safe, serializer_names
from ._guard import peer_identity

logger = logging.getLogger("parallalx_jupyter.cluster.sanitize")

#: Client-side event handlers of distributed that unpickle the event's payload.
UNPICKLED_TOPICS = frozenset({"warn"})
MAX_TEXT = 64 * 1024
_MAX_DEPTH = 64
_REPR = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\((.*)\)", re.S)


class DeviceTaskError(RuntimeError):
    """A task failed on a device with an error that is only shown, never rebuilt as its class."""

    def __init__(self, text: str, remote_traceback: str = "", device: str = "") -> None:
        super().__init__(text, remote_traceback, device)
        self.text = text
        self.remote_traceback = remote_traceback
        self.device = device

    def __str__(self) -> str:
        where = f" on device {self.device}" if self.device else ""
        tb = f"\n\nRemote traceback:\n{self.remote_traceback}" if self.remote_traceback else ""
        return f"task failed{where}: {self.text}{tb}"


class RefusedResult(Exception):
    """Stands in for data a device sent in a form that could run code on the main device."""

    def __init__(self, device: str = "", serializers: str = "") -> None:
        super().__init__(device, serializers)
        self.device = device
        self.serializers = serializers

    def __str__(self) -> str:
        return (
            f"refused a result from device {self.device or '?'}: it was serialized with "
            f"{self.serializers or 'pickle'}, which could run code on this device; parallalx "
            "accepts plain data (numbers, strings, bytes, lists, dicts) from devices"
        )


#: The errors parallalx's own tasks raise on devices, which keep their class when rebuilt.
#: Named, not imported: the cluster layer does not depend on the engines above it, and a
#: scheduler without one of them simply rebuilds its errors as DeviceTaskError.
REBUILDABLE_ERRORS = (
    "parallalx_jupyter.training.errors:TrainingError",
    "parallalx_jupyter.training.errors:UserCodeError",
    "parallalx_jupyter.training.errors:CheckpointMismatchError",
    "parallalx_jupyter.training.errors:RankInfraError",
    "parallalx_jupyter.training.errors:VersionMismatchError",
    "parallalx_jupyter.workloads.inference.common:InferenceUserError",
)


def _rebuildable() -> dict[str, type]:
    """Exception classes a device's error text may name: builtins and parallalx's own."""
    out = {
        name: obj
        for name, obj in vars(builtins).items()
        if isinstance(obj, type) and issubclass(obj, Exception)
    }
    for ref in REBUILDABLE_ERRORS:
        module, _, name = ref.partition(":")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):  # pragma: no cover - an engine not installed
            logger.debug("%s not importable", ref, exc_info=True)
            continue
        if isinstance(cls, type) and issubclass(cls, Exception):
            out[name] = cls
    return out


_REBUILDABLE: dict[str, type] | None = None


def rebuild_exception(text: Any, tb_text: Any, device: str) -> BaseException:
    """An exception made here from a device's error *text* (``repr(exc)``); never unpickles."""
    global _REBUILDABLE
    if _REBUILDABLE is None:
        _REBUILDABLE = _rebuildable()
    text = str(text or "")[:MAX_TEXT]
    tb_text = str(tb_text or "")[:MAX_TEXT]
    m = _REPR.fullmatch(text.strip())
    cls = _REBUILDABLE.get(m.group(1)) if m else None
    if m is not None and cls is not None:
        inner = m.group(2).strip()
        try:
            args = ast.literal_eval(f"({inner},)") if inner else ()
            if isinstance(args, tuple):
                exc = cls(*args)
                if tb_text and cls.__module__ == "builtins":
                    exc.add_note(f"Remote traceback (device {device}):\n{tb_text}")
                return exc
        except Exception:  # not literals, wrong arity, too deep: keep the text
            pass
    return DeviceTaskError(text, tb_text, device)


def _serialized(obj: Any) -> Serialized:
    return Serialized(*serialize(obj, serializers=("pickle",)))


class _Sanitizer:
    def __init__(self, device: str) -> None:
        self.device = device
        self.changed: list[str] = []

    def message(self, msg: Any) -> Any:
        if isinstance(msg, (list, tuple)):
            kept = [m for m in (self.one(m) for m in msg) if m is not _DROP]
            return kept if isinstance(msg, list) else tuple(kept)
        out = self.one(msg)
        return None if out is _DROP else out

    def one(self, msg: Any) -> Any:
        if isinstance(msg, dict):
            op = msg.get("op")
            if op == "log-event" and msg.get("topic") in UNPICKLED_TOPICS:
                self.changed.append(f"dropped a {msg.get('topic')!r} event")
                return _DROP
            if op == "task-finished" and msg.get("type") is not None:
                msg = {**msg, "type": None}
        return self.walk(msg, 0)

    def walk(self, obj: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            return obj
        if isinstance(obj, Serialized):
            if header_is_safe(obj.header):
                return obj
            names = ", ".join(sorted(serializer_names(obj.header)))
            self.changed.append(f"refused data serialized with {names}")
            return _serialized(RefusedResult(self.device, names))
        if isinstance(obj, dict):
            # distributed's clean_exception unpickles an error given as bytes too (also bytes
            # that arrived as msgpack): every error a device reports is rebuilt from its text
            if obj.get("exception") is not None or obj.get("traceback") is not None:
                obj = dict(obj)
                text = obj.get("exception_text")
                if text is None and isinstance(obj.get("exception"), str):
                    text = obj["exception"]
                obj["exception"] = _serialized(
                    rebuild_exception(
                        text or "an error without a description",
                        obj.get("traceback_text"),
                        self.device,
                    )
                )
                obj["traceback"] = _serialized(None) if "traceback" in obj else None
                self.changed.append("rebuilt a task error from its text")
                made_here = ("exception", "traceback")
            else:
                made_here = ()
            return {
                k: v if k in made_here else self.walk(v, depth + 1) for k, v in obj.items()
            }
        if isinstance(obj, list):
            return [self.walk(v, depth + 1) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.walk(v, depth + 1) for v in obj)
        return obj


_DROP = object()


def sanitize_device_message(msg: Any, comm: Any) -> Any:
    """The pickle boundary's ``sanitize`` hook on the scheduler (device peers only)."""
    device = peer_identity(comm).device_id or "?"
    s = _Sanitizer(device)
    out = s.message(msg)
    if s.changed:
        logger.info("device %s: %s", device, "; ".join(sorted(set(s.changed))))
    return out


__all__ = [
    "DeviceTaskError",
    "RefusedResult",
    "rebuild_exception",
    "sanitize_device_message",
]
