"""The one answer every workload uses to "whose fault: the user's code or the device?"."""

from __future__ import annotations

import asyncio

import pytest
from distributed import KilledWorker
from distributed.comm.core import CommClosedError

from parallalx_jupyter.cluster.sanitize import DeviceTaskError, rebuild_exception
from parallalx_jupyter.jobs.failures import classify_failure
from parallalx_jupyter.training.errors import (
    CheckpointMismatchError,
    RankInfraError,
    UserCodeError,
)
from parallalx_jupyter.workloads.inference import InferenceUserError


@pytest.mark.parametrize(
    ("exc", "status", "kind"),
    [
        (UserCodeError("boom", "tb", 0, "w"), "error", "user"),
        (InferenceUserError("model raised"), "error", "user"),
        (RankInfraError("connection reset"), "error", "device"),
        (KilledWorker("k", None, 3), "error", "device"),
        (CommClosedError("gone"), "error", "device"),
        (asyncio.CancelledError(), "error", "device"),
        (TimeoutError(), "error", "device"),
        (None, "lost", "device"),
        (None, "error", "device"),
        (ValueError("a sweep objective's own error"), "error", "unexplained"),
        (DeviceTaskError("MyError('x')", "", "DEVA"), "error", "unexplained"),
    ],
)
def test_every_workload_gets_the_same_answer(exc, status, kind):
    assert classify_failure(exc, status) == kind


def test_a_devices_errors_keep_their_kind_when_rebuilt_from_text():
    """What the scheduler rebuilds from a device's error text classifies like the original."""
    for original in (UserCodeError("boom", "tb", 1, "w"), InferenceUserError("bad row"),
                     RankInfraError("reset"), CheckpointMismatchError("another job", "", 0, "w")):
        rebuilt = rebuild_exception(repr(original), "", "DEVA")
        assert type(rebuilt) is type(original)
        assert classify_failure(rebuilt) == classify_failure(original)
