"""A finished job releases what it held, so a long session stays flat (issue #18, item 6).

Before, every job left its two event topics on the scheduler and their two handlers on the
client (``Client.unsubscribe_topic`` keeps the handler), and the handlers kept the whole job
alive: driver, records, shipped copies of the model, the result. The cluster here is a
LocalCluster whose scheduler runs in this process (tests/local_dask.py), as in a notebook
that starts one, so this process's memory is the notebook's and the scheduler's together.
"""

from __future__ import annotations

import functools
import gc
import logging
import weakref
from collections.abc import Iterator
from typing import Any

import dask
import psutil
import pytest
import torch
from local_dask import local_dask_client
from torch import nn

from parallalx_jupyter.workloads.train import train

pytestmark = pytest.mark.timeout(300)

#: Dask's own bounded logs (events per topic, the scheduler's log and transition log, the last
#: computations) fill up over the first ~200 such jobs and then stay flat: with Dask's defaults
#: they are most of the growth a short run sees (docs/benchmarks.md). Shrunk here, the run
#: measures what grows without bound.
SMALL_DASK_LOGS = {
    "distributed.admin.low-level-log-length": 20,
    "distributed.admin.log-length": 20,
    "distributed.diagnostics.computations.max-history": 5,
}
#: RSS growth per job allowed. Measured here with the shrunk logs (docs/benchmarks.md): 0.53
#: MB/job before the release; after it 0.04-0.15 MB/job from run to run on a loaded 2-core
#: machine (Dask's spans, which it never forgets, and the allocator)
MB_PER_JOB = 0.25


@pytest.fixture(scope="module")
def local_cluster() -> Iterator[Any]:
    with dask.config.set(SMALL_DASK_LOGS), local_dask_client(2) as client:
        yield client


def _job(client: Any) -> Any:
    torch.manual_seed(0)
    x, y = torch.randn(64, 128), torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(128, 256), nn.Linear(256, 1))  # ~130 KB of weights
    return train(model, (x, y), nn.MSELoss(), functools.partial(torch.optim.SGD, lr=0.01),
                 epochs=3, batch_size=16, client=client, torch_threads=1, report=False)


def _held(client: Any) -> tuple[list[str], list[str]]:
    """This process's job topics on the scheduler and job handlers on the client."""
    scheduler = client.cluster.scheduler
    topics = [t for t in scheduler._broker._topics if t.startswith("parallalx-")]
    handlers = [t for t in client._event_handlers if t.startswith("parallalx-")]
    return topics, handlers


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def test_a_finished_job_holds_nothing_on_the_scheduler_or_the_client(local_cluster) -> None:
    handles = []
    for _ in range(3):
        job = _job(local_cluster)
        job.result(timeout=120)
        assert _held(local_cluster) == ([], [])
        handles.append(weakref.ref(job))
        del job
    gc.collect()
    assert [ref() for ref in handles] == [None, None, None]  # nothing else keeps a job alive


def test_sequential_jobs_stay_flat(local_cluster, caplog) -> None:
    # pytest keeps every captured log record until the test ends (a notebook does not): Dask's
    # INFO lines, ~10 per job, would be half of what is measured
    caplog.set_level(logging.WARNING, logger="distributed")
    for _ in range(10):  # warm-up: imports, allocator arenas, Dask's logs filling up
        _job(local_cluster).result(timeout=120)
    n = 30
    before = _rss_mb()
    for _ in range(n):
        _job(local_cluster).result(timeout=120)
    per_job = (_rss_mb() - before) / n
    print(f"\nRSS growth per job over {n} jobs: {per_job:.3f} MB")
    assert _held(local_cluster) == ([], [])
    assert per_job <= MB_PER_JOB
