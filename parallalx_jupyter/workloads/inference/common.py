"""What the inference modules share: limits and error types."""

from __future__ import annotations

import logging

from ...jobs.failures import UserCodeFailure

log = logging.getLogger(__name__)



_PY = {"x-python": True}

IN_FLIGHT = 2  # shards per worker: one running, one waiting so the worker never idles
POLL_S = 0.2  # how often the scheduler's worker list is read while waiting
PROGRESS_S = 0.25  # progress records at most this often (the notebook redraws on each)
PROBE_MIN_S = 0.2  # time the probe's forward passes for at least this long...
PROBE_MAX_REPS = 20  # ...or this many passes, whichever comes first
SPEED_EMA = 0.5  # weight of the newest measured shard in a worker's speed estimate
CACHE_JOBS = 2  # jobs whose models a worker process keeps, should a cleanup task never run
CLEANUP_WAIT_S = 5.0
FETCH_TIMEOUT_S = 30.0  # a finished task's result lives on its worker; if that worker dies
# before the fetch, a pinned task is never recomputed, so the fetch must not wait forever


class InferenceError(RuntimeError):
    """The inference job could not finish (no worker left, a range lost too often, ...)."""


class InferenceUserError(InferenceError, UserCodeFailure):
    """The model, ``postprocess`` or the data set raised; the message holds the worker's
    traceback. Never retried: it would fail the same way on every worker."""


