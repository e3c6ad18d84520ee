"""What runs on a worker: the model cache, the speed probe and one shard's forward passes."""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ...wire import to_wire
from .common import CACHE_JOBS, PROBE_MAX_REPS, PROBE_MIN_S, InferenceUserError
from .data import RowSource


@dataclass
class _Loaded:
    """One job's objects on one worker process, built once from the shipped blob."""

    model: Any
    postprocess: Any
    source: RowSource | None  # the worker-built data set (factory jobs only)
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)


_CACHE: OrderedDict[str, _Loaded] = OrderedDict()
_CACHE_LOCK = threading.Lock()


@contextlib.contextmanager
def _user_code(what: str, worker: str) -> Iterator[None]:
    """Turn any error of the user's code into one that says where and carries the traceback
    as text (a remote traceback object does not survive every path back to the notebook)."""
    try:
        yield
    except InferenceUserError:
        raise
    except Exception as exc:
        raise InferenceUserError(
            f"{what} raised {type(exc).__name__}: {exc}\n\n"
            f"Traceback on worker {worker}:\n{traceback.format_exc()}"
        ) from None


def _load(job_id: str, payload: dict[str, Any], worker: str) -> _Loaded:
    with _CACHE_LOCK:
        hit = _CACHE.get(job_id)
        if hit is not None:
            _CACHE.move_to_end(job_id)
            return hit
        import cloudpickle
        import torch

        from ...training.spec import build_model

        with _user_code("unpacking the model/data set on the worker", worker):
            try:
                model, postprocess, factory = cloudpickle.loads(payload["blob"])
            except ModuleNotFoundError as exc:
                raise ModuleNotFoundError(
                    f"{exc}. The worker cannot import code the job refers to: install it in "
                    "the worker's environment, or call cloudpickle.register_pickle_by_value("
                    "module) in the notebook before starting the job"
                ) from exc
        device = "cuda" if torch.cuda.is_available() else "cpu"
        with _user_code("building the model", worker):
            model = build_model(model).to(device)
            model.eval()
        source = None
        if factory is not None:
            with _user_code("the data set factory", worker):
                source = RowSource(factory())
        loaded = _Loaded(model, postprocess, source, device)
        _CACHE[job_id] = loaded
        while len(_CACHE) > CACHE_JOBS:
            _CACHE.popitem(last=False)
        return loaded


def _drop(job_id: str) -> bool:
    """Dask task: forget the job's model (and free its GPU memory) on this worker."""
    with _CACHE_LOCK:
        found = _CACHE.pop(job_id, None) is not None
    if found:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()
    return found


def _take(inputs: Any, a: int, b: int) -> Any:
    if isinstance(inputs, dict):
        return {k: _take(v, a, b) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_take(v, a, b) for v in inputs)
    return inputs[a:b]


def _to_cpu(obj: Any) -> Any:
    """Outputs back to host memory, synchronously (a non-blocking device-to-host copy may be
    read before it has landed)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu")
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def _forward(loaded: _Loaded, xb: Any, worker: str) -> Any:
    import torch

    from ...training.spec import to_device

    with torch.no_grad():
        with _user_code("the model", worker):
            out = loaded.model(to_device(xb, loaded.device))
        if loaded.postprocess is not None:
            with _user_code("postprocess", worker):
                out = loaded.postprocess(out)
    return _to_cpu(out)


def _is_rows(out: Any) -> bool:
    import torch

    return isinstance(out, torch.Tensor) and out.dim() > 0


def _pack(outs: list[Any], rows: list[int]) -> tuple[str, Any]:
    """A shard's outputs: one tensor where every batch gave rows of a tensor, else a list
    (per-row items of sequences with one entry per row, otherwise one entry per batch)."""
    import torch

    if all(_is_rows(o) for o in outs):
        return "cat", torch.cat(outs) if outs else None
    items: list[Any] = []
    for out, n in zip(outs, rows, strict=True):
        if _is_rows(out) or (isinstance(out, (list, tuple)) and len(out) == n):
            items.extend(out)
        else:
            items.append(out)
    return "list", items


def _still_wanted(worker: Any, key: Any) -> bool:
    """Whether the scheduler still wants this task (a cancelled one should stop early)."""
    ts = worker.state.tasks.get(key)
    return ts is not None and ts.state not in ("cancelled", "released", "forgotten")


def probe_task(job_id: str, payload: dict[str, Any], batch_size: int) -> bytes:
    """Dask task (pinned): load the job and time the forward pass on one batch -> rows/s."""
    from distributed import get_worker

    worker = get_worker()
    loaded = _load(job_id, payload, worker.address)
    n_rows = len(loaded.source) if loaded.source is not None else None
    if payload["probe"] is not None:
        xb, k = payload["probe"], payload["probe_rows"]
    else:
        assert loaded.source is not None
        k = min(batch_size, len(loaded.source))
        if k == 0:
            return to_wire({"rows_per_s": 0.0, "device": loaded.device, "n_rows": 0})
        with _user_code("the data set", worker.address):
            xb = loaded.source.rows(0, k)
    with loaded.lock:  # one timing at a time: two jobs' probes must not skew each other
        _forward(loaded, xb, worker.address)  # warm-up: lazy init, kernels, caches
        reps, t0 = 0, time.perf_counter()
        while True:
            _forward(loaded, xb, worker.address)
            reps += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= PROBE_MIN_S or reps >= PROBE_MAX_REPS:
                break
    return to_wire({
        "rows_per_s": k * reps / max(elapsed, 1e-9),
        "device": loaded.device,
        "n_rows": n_rows,
    })


def shard_task(
    job_id: str, payload: dict[str, Any], lo: int, hi: int, rows: Any, batch_size: int
) -> bytes:
    """Dask task (pinned): outputs of rows ``[lo, hi)``; ``rows`` are the inputs, or None to
    read them from the worker-built data set. None if cancelled part way. Travels back as data
    (``wire``), like every task's result."""
    from distributed import get_worker

    worker = get_worker()
    key = worker.get_current_task()
    loaded = _load(job_id, payload, worker.address)
    t0 = time.perf_counter()
    outs: list[Any] = []
    sizes: list[int] = []
    for a in range(0, hi - lo, batch_size):
        if not _still_wanted(worker, key):
            return to_wire(None)
        b = min(a + batch_size, hi - lo)
        if rows is not None:
            xb = _take(rows, a, b)
        else:
            assert loaded.source is not None
            with _user_code("the data set", worker.address):
                xb = loaded.source.rows(lo + a, lo + b)
        outs.append(_forward(loaded, xb, worker.address))
        sizes.append(b - a)
    kind, out = _pack(outs, sizes)
    return to_wire({
        "lo": lo,
        "hi": hi,
        "kind": kind,
        "out": out,
        "seconds": time.perf_counter() - t0,
    })


# --------------------------------------------------------------------------- driver side
