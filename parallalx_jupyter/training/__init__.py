"""The training engine: data-parallel PyTorch over any dask.distributed cluster.

Driver, ranks, strategies, checkpoints, preflight and the errors they raise. The public call,
``train(...)`` and the ``TrainingJob`` it returns, is the ``train`` workload
(:mod:`parallalx_jupyter.workloads.train`, also ``parallalx_jupyter.train``): this package
never imports ``workloads``.
"""

from .errors import (
    CheckpointMismatchError,
    NotEnoughWorkersError,
    RestartsExhaustedError,
    TrainingCancelledError,
    TrainingError,
    UnknownWorkersError,
    UserCodeError,
    VersionMismatchError,
)
from .preflight import PreflightReport

__all__ = [
    "CheckpointMismatchError",
    "NotEnoughWorkersError",
    "PreflightReport",
    "RestartsExhaustedError",
    "TrainingCancelledError",
    "TrainingError",
    "UnknownWorkersError",
    "UserCodeError",
    "VersionMismatchError",
]
