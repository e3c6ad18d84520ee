"""Checkpoints owned by the caller: gathered on rank 0, shipped home, written atomically.

No shared filesystem is assumed: rank 0 gathers the *full* (unsharded) model and optimizer state
with ``torch.distributed.checkpoint.state_dict`` (works for plain modules, DDP and FSDP2) and
ships the serialized bytes to the notebook process, which keeps the newest in memory (so recovery
works without a ``checkpoint_dir``) and, if asked, writes it with temp file + fsync +
``os.replace``: a crash mid-write leaves the previous checkpoint intact.

Format: one ``torch.save`` dict of tensors and plain types only, so it loads with
``torch.load(weights_only=True)``; checkpoints from peers are untrusted input. RNG states are
stored as tensors / lists of ints for the same reason. Full state dicts are independent of the
world size and the strategy, so a job saved on N ranks resumes on M ranks. ``meta`` carries
the job's fingerprint, its step count and whether the run finished: what decides if a later
job may resume from it (:mod:`.resume`).
"""

from __future__ import annotations

import io
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
FILE_PREFIX = "checkpoint-"
FILE_SUFFIX = ".pt"


# --------------------------------------------------------------------------- serialization
def pack(state: dict[str, Any]) -> bytes:
    """Serialize a checkpoint dict (tensors and plain types) to bytes."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def unpack(data: bytes) -> dict[str, Any]:
    """Load checkpoint bytes safely (``weights_only=True``, onto CPU)."""
    import torch

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError("not a parallalx training checkpoint (or an unsupported format)")
    return state


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- RNG
def capture_rng() -> dict[str, Any]:
    """This process's RNG states as tensors / ints (weights_only-loadable)."""
    import torch

    version, internal, gauss = random.getstate()
    out: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python_version": int(version),
        "python_state": torch.tensor(internal, dtype=torch.int64),
        "python_gauss": gauss,
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (missing parts are left as they are)."""
    import torch

    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "python_state" in state:
        internal = tuple(int(x) for x in state["python_state"].tolist())
        random.setstate((int(state["python_version"]), internal, state.get("python_gauss")))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- rank side
def gather_state(
    model: Any, optimizer: Any, with_optimizer: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Full model and optimizer state dicts on rank 0 (collective: every rank must call).

    Other ranks get empty dicts. Keys are the original parameter names, whatever the wrapper.
    ``with_optimizer=False`` (the same on every rank) leaves the optimizer state out.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    if not with_optimizer:
        return msd, {}
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    return msd, osd


def load_state(model: Any, optimizer: Any, state: dict[str, Any]) -> None:
    """Load a full checkpoint into a (possibly wrapped/sharded) model and its optimizer."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, state["model"], options=opts)
    osd = state.get("optimizer") or {}
    has_tensors = any(
        isinstance(v, torch.Tensor) and v.dim() > 0
        for per_param in osd.get("state", {}).values()
        for v in per_param.values()
    )
    if has_tensors:
        set_optimizer_state_dict(model, optimizer, osd, options=opts)
    else:
        # Stateless so far (plain SGD, or saved before the first step): torch's loader needs a
        # tensor to infer the device from, and there is nothing but hyper-parameters to restore.
        for group, saved in zip(optimizer.param_groups, osd.get("param_groups", []), strict=False):
            group.update({k: v for k, v in saved.items() if k != "params"})


def make_checkpoint(
    *,
    model_state: dict[str, Any],
    optimizer_state: dict[str, Any],
    epoch: int,
    step: int,
    global_step: int,
    rng: list[dict[str, Any]],
    meta: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the on-disk dict; (epoch, step) is the *next* position to train. ``extra``:
    more state of the loop (the LR scheduler's, the gradient scaler's), plain types only."""
    return {
        **(extra or {}),
        "format": FORMAT_VERSION,
        "model": model_state,
        "optimizer": optimizer_state,
        "epoch": int(epoch),
        "step": int(step),
        "global_step": int(global_step),
        "rng": rng,
        "meta": dict(meta, time=time.time()),
    }


# --------------------------------------------------------------------------- driver side
class CheckpointStore:
    """The notebook-side owner of checkpoints: newest in memory, optionally on disk.

    ``put`` ignores anything older than what it holds (a late message from an attempt that was
    already superseded must not roll training back). ``keep`` files are retained on disk.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, keep: int = 2) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.keep = max(1, keep)
        self._lock = threading.Lock()
        self._data: bytes | None = None
        self._step = -1
        self.last_path: Path | None = None
        self.write_error: str | None = None  # why the newest checkpoint is in memory only

    def check_writable(self) -> None:
        """Create the directory and write a probe file; OSError if either fails.

        Called before training, so a bad ``checkpoint_dir`` (a file, a read-only disk, no
        permission) is refused at once instead of at the first checkpoint, or at the end.
        """
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.directory / f".probe-{os.getpid()}", b"")
        (self.directory / f".probe-{os.getpid()}").unlink()

    @property
    def global_step(self) -> int:
        """Global step of the newest checkpoint held (-1 if none)."""
        return self._step

    def put(self, data: bytes, global_step: int) -> Path | None:
        """Keep ``data`` if it is the newest; write it to disk when a directory is set."""
        with self._lock:
            self.write_error = None
            if global_step < self._step:
                return None
            self._data, self._step = data, global_step
            if self.directory is None:
                return None
            path = self.directory / f"{FILE_PREFIX}{global_step:09d}{FILE_SUFFIX}"
            try:
                write_atomic(path, data)
            except OSError as err:
                # A full disk mid-run must not cost the training: the checkpoint stays in
                # memory (recovery and the final model use it); the caller reports why.
                self.write_error = f"{path}: {err.strerror or err}"
                return None
            self.last_path = path
            self._prune()
            return path

    def latest(self) -> bytes | None:
        """Newest checkpoint bytes: in memory, else the newest loadable file on disk."""
        with self._lock:
            if self._data is not None:
                return self._data
        for path in reversed(self.files()):
            data = path.read_bytes()
            try:
                state = unpack(data)
            except Exception:  # a foreign or corrupt file: fall back to an older one
                continue
            with self._lock:
                self._data, self._step = data, int(state["global_step"])
                self.last_path = path
            return data
        return None

    def set_aside(self, prefix: str) -> Path | None:
        """Move the checkpoint files into a new subfolder ``<prefix><time>`` and forget them.

        For a finished run: a new run in the same directory must neither resume from it nor
        mix its files with it, and nothing the user trained is deleted.
        """
        files = self.files()
        with self._lock:
            self._data, self._step, self.last_path = None, -1, None
        if self.directory is None or not files:
            return None
        base = self.directory / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}"
        target, n = base, 1
        while target.exists():
            n += 1
            target = base.with_name(f"{base.name}-{n}")
        target.mkdir()
        for path in files:
            os.replace(path, target / path.name)
        return target

    def files(self) -> list[Path]:
        """Checkpoint files in the directory, oldest first."""
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"{FILE_PREFIX}*{FILE_SUFFIX}"))

    def _prune(self) -> None:
        for old in self.files()[: -self.keep]:
            try:
                old.unlink()
            except OSError:
                pass
