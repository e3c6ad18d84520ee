"""`px.launch(..., requirements=[...])`: each device's chosen interpreter gets what the job
needs before its ranks start. The device is a real Dask worker running in its own virtual
environment (as a device whose user picked a kernel), with its own pip configuration (a local
wheelhouse, no index)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
from distributed import Client, LocalCluster
from env_helpers import TOY

import parallalx_jupyter as px

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests


def toy_version() -> str:
    import px_toy  # only in the worker's environment

    return px_toy.VERSION


@pytest.fixture
def venv_worker(make_venv, wheelhouse) -> Iterator[Client]:
    python = make_venv("device-kernel")
    cluster = LocalCluster(n_workers=0, processes=True, dashboard_address=None,
                           host="127.0.0.1")
    client = Client(cluster)
    env = {**os.environ, "PIP_FIND_LINKS": str(wheelhouse), "PIP_NO_INDEX": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    worker = subprocess.Popen(
        [str(python), "-m", "distributed.cli.dask_worker", cluster.scheduler_address,
         "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1", "--name", "kernel-device"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client.wait_for_workers(1, timeout=60)
        yield client
    finally:
        client.close()
        worker.terminate()
        worker.wait(30)
        cluster.close()


def test_requirements_are_installed_in_the_devices_kernel_first(venv_worker: Any) -> None:
    with pytest.raises(Exception, match="No module named 'px_toy'"):
        px.launch(toy_version, client=venv_worker, report=False).result(timeout=120)

    job = px.launch(toy_version, client=venv_worker, report=False,
                    requirements=[f"{TOY}==1.0"])
    assert job.result(timeout=180) == "1.0"
    said = [r.get("message") or "" for r in job.events if r.get("kind") == "state"]
    assert any(m.startswith(f"installed on kernel-device: {TOY} 1.0") for m in said), said

    t0 = time.monotonic()  # already there: checked, nothing installed
    again = px.launch(toy_version, client=venv_worker, report=False,
                      requirements=[f"{TOY}>=1.0"])
    assert again.result(timeout=120) == "1.0"
    assert not any("installed on" in (r.get("message") or "") for r in again.events)
    print(f"second launch with satisfied requirements: {time.monotonic() - t0:.1f} s")


def test_a_device_that_cannot_have_them_fails_the_job_by_name(venv_worker: Any) -> None:
    job = px.launch(toy_version, client=venv_worker, report=False,
                    requirements=[f"{TOY}==9.9"])
    with pytest.raises(Exception) as err:
        job.result(timeout=180)
    text = str(err.value)
    assert "kernel-device cannot provide the job's requirements" in text and TOY in text
    assert job.restarts == 0


def test_bad_requirements_are_one_line_before_anything_starts(venv_worker: Any) -> None:
    with pytest.raises(Exception, match="launch: direct references are not accepted"):
        px.launch(toy_version, client=venv_worker, report=False,
                  requirements=["evil @ https://example.invalid/x.whl"])
