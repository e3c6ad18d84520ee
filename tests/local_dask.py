"""A plain local Dask cluster for tests that need any `distributed` cluster (not parallalx's)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def local_dask_client(workers: int = 2) -> Iterator[Any]:
    """A plain `distributed` LocalCluster (worker processes, one thread each) and a client that
    is not the process default. Workers inherit this process's environment when they start."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    client = Client(cluster, set_as_default=False)
    client.wait_for_workers(workers, timeout=60)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
