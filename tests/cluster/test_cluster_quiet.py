"""The scheduler and workers of a parallalx cluster run Dask's periodic work at quiet rates.

A rank process trains on the same cores as its device's worker; Dask's default 20 ms tick,
500 ms system monitor, 100 ms memory check and 10 ms profiler only take CPU from it.
"""

from __future__ import annotations

import sys

import cloudpickle
import dask
import pytest

from parallalx_jupyter.cluster.quiet import QUIET_DASK_CONFIG, quiet_dask_env

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.timeout(120)

QUIET_PERIODS_MS = {"tick": 1000, "monitor": 2000}


def test_env_form_is_what_dask_reads():
    assert dask.config.collect_env(quiet_dask_env()) == {
        "distributed": {
            "admin": {"tick": {"interval": "1s"}, "system_monitor": {"interval": "2s"}},
            "worker": {"memory": {"monitor_interval": "1s"}, "profile": {"enabled": False}},
        }
    }
    with dask.config.set(dask.config.collect_env(quiet_dask_env())):
        for key, value in QUIET_DASK_CONFIG.items():
            assert dask.config.get(key) == value


async def test_parallalx_workers_and_scheduler_run_quiet(harness):
    sp = await harness.scheduler()
    ws = await harness.worker(sp, harness.device_credentials("DEVA"))
    client = await sp.client()

    def _worker_periods() -> dict:  # nested: shipped by value, like any user's function
        from distributed import get_worker

        return {k: pc.callback_time for k, pc in get_worker().periodic_callbacks.items()}

    try:
        periods = await client.submit(
            _worker_periods, workers=[ws.status()["address"]], pure=False
        )
        assert "profile" not in periods  # statistical profiler off
        assert periods["memory_monitor"] == 1000
        for name, ms in QUIET_PERIODS_MS.items():
            assert periods[name] == ms
        scheduler_periods = await client.run_on_scheduler(
            lambda dask_scheduler: {
                k: pc.callback_time for k, pc in dask_scheduler.periodic_callbacks.items()
            }
        )
        for name, ms in QUIET_PERIODS_MS.items():
            assert scheduler_periods[name] == ms
    finally:
        await client.close()
