"""Exceptions raised by the training engine.

They live in one small module because both sides use them: rank tasks raise them on a worker and
Dask pickles them back to the notebook, so the class must be importable in both processes and
carry everything the user needs (the remote traceback as text, never a live traceback object).
"""

from __future__ import annotations

import re
import sys

from ..jobs.failures import DeviceFailure, UserCodeFailure
from ..jobs.handle import JobCancelledError


class TrainingError(RuntimeError):
    """Base class for every error the training engine raises on purpose."""


class UserCodeError(TrainingError, UserCodeFailure):
    """The user's model, dataset, loss or optimizer code raised on a worker.

    ``remote_traceback`` is the formatted traceback from the worker process; it is also part of
    ``str(error)`` so a notebook shows where the user's code failed, not where we re-raised it.
    Restarting would only fail again, so the driver never retries this error.
    """

    def __init__(
        self, message: str, remote_traceback: str = "", rank: int = -1, worker: str = ""
    ) -> None:
        super().__init__(message, remote_traceback, rank, worker)
        self.message = message
        self.remote_traceback = remote_traceback
        self.rank = rank
        self.worker = worker

    def __str__(self) -> str:
        where = f" on rank {self.rank} ({self.worker})" if self.rank >= 0 else ""
        tb = f"\n\nRemote traceback:\n{self.remote_traceback}" if self.remote_traceback else ""
        return f"user code failed{where}: {self.message}{tb}"


class CheckpointMismatchError(UserCodeError):
    """The checkpoint to resume from was made by another job (model, optimizer, data set or
    global batch differ); the message names what differs.

    Raised in the notebook before anything runs where it can tell (objects rather than
    factories), else by the ranks: a user error either way, so it is never retried.
    """

    def __str__(self) -> str:
        where = f" (found on rank {self.rank}, {self.worker})" if self.rank >= 0 else ""
        return f"{self.message}{where}"


class RankInfraError(TrainingError, DeviceFailure):
    """A rank lost its peers (gloo connection reset, group timeout, rendezvous failure).

    Raised inside rank tasks so the driver can tell "the cluster changed, re-form and resume"
    apart from "the user's code is broken". The message keeps the original error text.
    """


class NotEnoughWorkersError(TrainingError):
    """Fewer usable workers than ``min_workers``: stop instead of training on a shrunken group."""


class UnknownWorkersError(TrainingError, ValueError):
    """``workers=`` names a worker the cluster does not have (a typo, a device not started):
    training on the rest would quietly drop a device the caller asked for."""


class VersionMismatchError(TrainingError):
    """Ranks (or the notebook) run different torch / Python / CUDA versions.

    Refused before any process group forms: mismatched torch builds can deadlock or corrupt
    collectives in ways that are far harder to diagnose than this message.
    """


class RestartsExhaustedError(TrainingError):
    """The job failed more often than ``max_restarts`` allows; ``__cause__`` is the last failure."""


class TrainingCancelledError(TrainingError, JobCancelledError):
    """``TrainingJob.cancel()`` stopped the job; the last checkpoint (if any) stays on disk."""


# Exit codes of a rank process (the Dask task reports anything else as a crash).
EXIT_OK, EXIT_FAILED, EXIT_ORPHANED = 0, 1, 3

# "peer" as a word only: as a substring it matches "TypeError". The others stay substrings
# ("ProcessGroupGloo", "ProcessGroupNCCL").
_COMM_MARKERS = re.compile(
    r"gloo|nccl|connection (reset|closed|refused)|broken pipe|timed out|timeout|socket|\bpeers?\b"
)


def is_comm_error(exc: BaseException) -> bool:
    """True for errors caused by the network / peers rather than by the user's code.

    Torch-free: a worker process (which never imports torch, see ``torch_processes.py``)
    classifies what its rank process reported; an exception can only be a ``DistError`` where
    ``torch.distributed`` is already loaded.
    """
    dist = sys.modules.get("torch.distributed")
    dist_error = getattr(dist, "DistError", None)
    if isinstance(exc, RankInfraError) or (dist_error is not None and isinstance(exc, dist_error)):
        return True
    if isinstance(exc, (RuntimeError, OSError, ConnectionError, TimeoutError)):
        return _COMM_MARKERS.search(str(exc).lower()) is not None
    return False
