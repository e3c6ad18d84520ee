"""One answer, for every workload, to "whose fault was this failure: the user's code or the
device?": the user's code fails the same way anywhere, so it is reported at once and never
retried; a device or network failure is worth re-running elsewhere.

Each engine wraps what the user's code raises on a worker in an exception that inherits
:class:`UserCodeFailure` (``UserCodeError`` in training, ``InferenceUserError`` in inference)
and what it knows to be the cluster's fault in one that inherits :class:`DeviceFailure`
(``RankInfraError``). Dask's own signs of a lost worker count as the device's. Anything else
is ``unexplained``: each workload says what it does with that (training re-forms, bounded by
``max_restarts``; inference and sweeps stop with the error).
"""

from __future__ import annotations

import asyncio
from typing import Literal

FailureKind = Literal["user", "device", "unexplained"]


class UserCodeFailure(Exception):  # noqa: N818 - a mixin, not raised on its own
    """Mixin: the user's own code raised (never retried)."""


class DeviceFailure(Exception):  # noqa: N818 - a mixin, not raised on its own
    """Mixin: the device or the network failed (re-run on the others)."""


def _lost_worker_types() -> tuple[type[BaseException], ...]:
    from distributed import KilledWorker
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError

    return (
        KilledWorker,
        CommClosedError,
        FutureCancelledError,
        asyncio.CancelledError,
        ConnectionError,
        TimeoutError,
        OSError,
    )


def classify_failure(exc: BaseException | None, status: str = "error") -> FailureKind:
    """Classify a failed task from its exception and its future's status.

    ``status == "lost"`` (the result died with its worker) and a missing exception (the task
    never ran to an error) are the device's.
    """
    if status == "lost" or exc is None:
        return "device"
    if isinstance(exc, UserCodeFailure):
        return "user"
    if isinstance(exc, (DeviceFailure, *_lost_worker_types())):
        return "device"
    return "unexplained"


__all__ = ["DeviceFailure", "FailureKind", "UserCodeFailure", "classify_failure"]
