"""Which cluster a job runs on: what ``client=`` takes, and one line when it is none of it."""

from __future__ import annotations

import socket

import dask
import pytest

from parallalx_jupyter.jobs.client import NoClientError, resolve_client


def test_a_value_that_is_no_client_cluster_or_address_is_named() -> None:
    """QA: client=42 failed inside the job with "'int' object has no attribute
    '_event_handlers'"."""
    with pytest.raises(TypeError, match=r"client= takes a distributed.Client, a cluster or a "
                       r"scheduler address .*not int"):
        resolve_client(42)


def test_an_address_nothing_answers_at_is_one_line() -> None:
    """QA: 30 s, then Dask's OSError with a 55-line traceback."""
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(NoClientError, match=rf"could not reach the Dask scheduler at "
                          rf"tcp://127.0.0.1:{port}: "):
        resolve_client(f"tcp://127.0.0.1:{port}")


def test_a_cluster_object_gets_a_client_of_its_own() -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        client, owned = resolve_client(cluster)
        try:
            assert owned and client.scheduler.address == cluster.scheduler_address
        finally:
            client.close()
