"""Data-parallel PyTorch training over any dask.distributed cluster (see ``api.train``)."""

from .api import TrainingJob, train
from .errors import (
    NotEnoughWorkersError,
    RestartsExhaustedError,
    TrainingCancelledError,
    TrainingError,
    UserCodeError,
    VersionMismatchError,
)
from .preflight import PreflightReport

__all__ = [
    "NotEnoughWorkersError",
    "PreflightReport",
    "RestartsExhaustedError",
    "TrainingCancelledError",
    "TrainingError",
    "TrainingJob",
    "UserCodeError",
    "VersionMismatchError",
    "train",
]
