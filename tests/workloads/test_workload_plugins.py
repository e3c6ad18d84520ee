"""A third-party workload, installed with pip, shows up everywhere and runs to completion.

docs/examples/parallalx-example-workload (the guide's example, workload ``pi``) is installed by
the ``example_workload`` fixture; nothing in parallalx names it. It then appears in the REST
API of a device server, in the CLI, and in the Python API, and runs on a real Dask cluster
from the CLI (which reports it to the device's job list) and from Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from local_dask import local_dask_client

from parallalx_jupyter.local_device import DeviceError, LocalDevice, wait_for
from parallalx_jupyter.workloads import WorkloadError, describe_all, run

pytestmark = pytest.mark.timeout(240)


def cli(dev: Any, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    return subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "--url", dev.url, "--token", dev.token,
         *args], capture_output=True, text=True, timeout=120, env=env,
    )


@pytest.fixture(scope="module")
def shared_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDevice]:
    dev = LocalDevice(home=tmp_path_factory.mktemp("plugin-bad"), name="plugin-bad").start()
    yield dev
    dev.stop()


@pytest.fixture(scope="module")
def plain_cluster(example_workload) -> Iterator[Any]:
    """Worker processes started after the install, so they can import the plugin's tasks."""
    with local_dask_client() as client:
        yield client


def test_installed_workload_is_listed_by_api_cli_and_python(example_workload, make_device):
    names = {w["name"]: w for w in describe_all()}
    assert {"train", "sweep", "inference", "pi"} <= set(names)
    assert names["pi"]["parameters"]["properties"]["samples"]["minimum"] == 1000

    dev = make_device("plugin-host")  # started after the install: its PYTHONPATH has it
    listed = {w["name"]: w for w in dev.api("GET", "workloads")}
    assert listed["pi"]["description"].startswith("Estimate pi")
    assert listed["pi"]["error"] is None and listed["train"]["error"] is None

    out = cli(dev, "workloads")
    assert out.returncode == 0, out.stderr
    assert "pi" in out.stdout and "Estimate pi" in out.stdout and "sweep" in out.stdout


def test_cli_runs_the_plugin_and_the_device_lists_the_job(example_workload, make_device,
                                                          plain_cluster) -> None:
    dev = make_device("plugin-cli")
    address = plain_cluster.scheduler.address
    out = cli(dev, "--json", "run", "pi", "samples=400000", "chunk=50000", "--scheduler", address,
              "--name", "pi from the CLI")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["state"] == "finished" and abs(summary["pi"] - 3.1416) < 0.02
    jobs = [j for j in dev.api("GET", "jobs") if j["id"] == summary["job"]]
    assert jobs and jobs[0]["state"] == "finished" and jobs[0]["workload"] == "pi"
    assert jobs[0]["owner"]["kind"] == "cli" and jobs[0]["name"] == "pi from the CLI"
    assert jobs[0]["progress"]["step"] == 400000

    listed = cli(dev, "jobs")
    assert listed.returncode == 0 and summary["job"] in listed.stdout
    assert "finished" in listed.stdout
    removed = cli(dev, "jobs", "remove", summary["job"])
    assert removed.returncode == 0, removed.stderr
    assert dev.api("GET", "jobs") == []


def test_python_api_runs_the_plugin(example_workload, plain_cluster) -> None:
    job = run("pi", samples=200_000, chunk=20_000, client=plain_cluster, report=False)
    assert abs(job.result(timeout=120) - 3.1416) < 0.03
    assert job.state == "finished" and job.progress["step"] == 200_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "nosuch"], "unknown workload 'nosuch'; available:"),
        (["run", "pi", "samples=5"], "pi: parameter 'samples': 5 is less than the minimum"),
        (["run", "pi", "colour=blue"], "pi: unknown parameter(s) colour"),
        (["run", "pi", "samples"], "expected key=value"),
        (["run", "pi", "--params-json", "[1]"], "--params-json must be a JSON object"),
        (["run", "launch", "fn=123"],
         "launch: parameter 'fn' must be a 'package.module:attribute' string"),
        (["run", "launch", "--params-json", '{"fn": null}'],
         "launch: parameter 'fn' must be a 'package.module:attribute' string"),
        (["run", "launch", "fn=.foo:x"], "launch: parameter 'fn': cannot import '.foo:x'"),
        (["jobs", "cancel", "nosuchjob"], "no job 'nosuchjob'"),
        (["jobs", "cancel"], "which job?"),
    ],
)
def test_cli_bad_input_is_one_clear_line(example_workload, shared_device, args, message) -> None:
    out = cli(shared_device, *args)
    assert out.returncode == 1, out
    assert message in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr


def test_unknown_workload_from_python_is_one_line() -> None:
    with pytest.raises(WorkloadError, match="unknown workload 'nope'"):
        run("nope", client="tcp://127.0.0.1:1", report=False)


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone meanwhile
        return ""


def test_rest_api_runs_a_workload_as_a_server_job(example_workload, make_device,
                                                   plain_cluster) -> None:
    dev = make_device("plugin-rest")
    address = plain_cluster.scheduler.address

    def job(job_id: str) -> dict[str, Any]:
        return dev.api("GET", f"jobs/{job_id}")

    started = dev.api("POST", "workloads/pi/run", {
        "params": {"samples": 200_000, "chunk": 20_000}, "scheduler": address,
        "name": "pi over REST"})
    assert started["state"] == "pending" and started["owner"]["kind"] == "server"
    assert started["name"] == "pi over REST"
    wait_for(lambda: job(started["id"])["state"] == "finished", 90)
    done = job(started["id"])
    assert done["progress"]["step"] == 200_000 and "pi ~ 3.1" in done["progress"]["message"]

    long = dev.api("POST", "workloads/pi/run", {
        "params": {"samples": 10**8, "chunk": 100_000}, "scheduler": address})
    wait_for(lambda: (job(long["id"])["progress"]["step"] or 0) > 0, 60)
    # the job's process got the API token in its environment, not on its command line
    # (which every local user can read)
    lines = [_cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit()]
    mine = [c for c in lines if long["id"] in c]
    assert mine and not any(dev.token in c for c in mine), mine
    dev.api("POST", f"jobs/{long['id']}/cancel")
    wait_for(lambda: job(long["id"])["state"] == "cancelled", 60)

    # this device has no cluster of its own: the job's process fails, the job says why
    orphan = dev.api("POST", "workloads/pi/run", {"params": {}})
    wait_for(lambda: job(orphan["id"])["state"] == "failed", 60)
    assert "no cluster has been started on this device" in job(orphan["id"])["error"]

    for path, body, status, message in [
        ("workloads/nosuch/run", {}, 404, "unknown workload 'nosuch'"),
        ("workloads/pi/run", {"params": {"samples": 5}}, 400, "parameter 'samples'"),
        ("workloads/pi/run", {"params": [1]}, 400, "field 'params'"),
        ("workloads/pi/run", {"colour": 1}, 400, "unexpected field"),
    ]:
        with pytest.raises(DeviceError) as info:
            dev.api("POST", path, body)
        assert info.value.status == status and message in str(info.value), str(info.value)
