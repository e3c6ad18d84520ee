"""What a parallalx task hands back to the main device: data, never a pickle.

Every task the engine runs on a device (probes, rank summaries, sweep trials, inference
shards) returns ``to_wire(value)``: one ``bytes`` object holding msgpack, whose only extension
is a tensor (or a module's ``state_dict``) in ``torch.save`` form. Dask carries ``bytes`` as
msgpack, so it passes the main device's pickle boundary (``cluster/_boundary.py``) untouched;
:func:`from_wire` decodes it with msgpack and ``torch.load(weights_only=True)``, neither of
which can run code. A value that is neither plain data nor tensors fails *on the device*, with
a message naming its type, instead of being refused silently on the main device.

What changes for a user: lists and tuples both come back as lists, sets as lists, numpy values
as tensors or Python numbers, and a ``torch.nn.Module`` as its ``state_dict`` (load it into
your own architecture): the main device never rebuilds an object a device described in code.
"""

from __future__ import annotations

import io
from typing import Any

import msgpack

_EXT_TENSOR = 1
_EXT_STATE_DICT = 2
_VERSION = 1


class WireError(TypeError):
    """A task result that cannot travel back to the main device as data."""


def to_wire(value: Any) -> bytes:
    """Encode a task result on the device (tensors on any device are moved to the CPU)."""
    return msgpack.packb({"v": _VERSION, "value": value}, default=_encode, use_bin_type=True)


def from_wire(data: Any) -> Any:
    """Decode :func:`to_wire`'s bytes on the main device; a refusal stand-in is raised."""
    if isinstance(data, BaseException):
        raise data  # e.g. the scheduler's RefusedResult for a result a device pickled
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(
            f"expected a parallalx task result (bytes), got {type(data).__name__}; was the task "
            "run by this version of parallalx on every device?"
        )
    try:
        out = msgpack.unpackb(bytes(data), ext_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except Exception as e:
        raise WireError(f"a task result could not be decoded: {e}") from None
    if not isinstance(out, dict) or out.get("v") != _VERSION:
        raise WireError("a task result in an unknown format")
    return out.get("value")


def _torch_bytes(obj: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _encode(obj: Any) -> Any:
    try:
        import torch
    except ImportError:  # pragma: no cover - every worker that runs a task has torch
        torch = None
    if torch is not None:
        if isinstance(obj, torch.Tensor):
            # clone: a view would otherwise save the whole storage it points into
            return msgpack.ExtType(_EXT_TENSOR, _torch_bytes(obj.detach().to("cpu").clone()))
        if isinstance(obj, torch.nn.Module):
            state = {k: v.detach().to("cpu").clone() for k, v in obj.state_dict().items()}
            return msgpack.ExtType(_EXT_STATE_DICT, _torch_bytes(state))
    type_name = type(obj).__module__ + "." + type(obj).__qualname__
    if type_name.startswith("numpy."):
        if hasattr(obj, "shape") and getattr(obj, "ndim", 0) > 0 and torch is not None:
            return msgpack.ExtType(_EXT_TENSOR, _torch_bytes(torch.as_tensor(obj).clone()))
        if hasattr(obj, "item"):
            return obj.item()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, (str, bytes)):  # subclasses (e.g. an Enum with str mixin)
        return str(obj) if isinstance(obj, str) else bytes(obj)
    raise WireError(
        f"a task result holds a {type_name}, which cannot travel back to the main device "
        "safely: return plain data (numbers, strings, bytes, lists, dicts), tensors, or a "
        "model's state_dict"
    )


def _decode(code: int, data: bytes) -> Any:
    if code in (_EXT_TENSOR, _EXT_STATE_DICT):
        import torch

        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    raise WireError(f"a task result with an unknown extension type {code}")


__all__ = ["WireError", "from_wire", "to_wire"]
