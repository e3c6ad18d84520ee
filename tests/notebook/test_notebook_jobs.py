"""`%parallalx workloads`, `%parallalx run` and `%parallalx jobs` with a real device server, a
real Dask LocalCluster and the example workload package installed through its entry point."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.error import UsageError
from local_dask import local_dask_client

from parallalx_jupyter.local_device import wait_for
from parallalx_jupyter.notebook.jobs import JobView
from parallalx_jupyter.notebook.training import TrainingDashboard

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def dask_client(example_workload) -> Iterator[Any]:
    """Workers start after the example workload is installed, so they can import it."""
    with local_dask_client() as client:
        yield client


def test_workloads_lists_the_installed_ones(ip, alpha, capsys) -> None:
    ip.use(alpha)
    capsys.readouterr()
    ip.run_line_magic("parallalx", "workloads -o wl")
    out = capsys.readouterr().out
    for name in ("train", "sweep", "inference"):
        assert name in out
    assert {w["name"] for w in ip.user_ns["wl"]} >= {"train", "sweep", "inference"}


def test_run_shows_a_live_view_and_the_job_is_in_the_device_list(
    ip, alpha, dask_client, capsys
) -> None:
    ip.use(alpha)
    ip.user_ns["client"] = dask_client
    ip.run_line_magic("parallalx", "run pi samples=300000 chunk=30000 --name notebook-pi -o pj")
    job = ip.user_ns["pj"]
    view = next(s for s in ip.shown if isinstance(s, JobView))
    assert view.job is job
    assert abs(job.result(timeout=120) - 3.1416) < 0.03
    wait_for(lambda: view.state == "finished" and view.bar.value == 1.0, 10)
    assert "pi ~" in view.text.value and view.cancel_button.disabled
    wait_for(lambda: any(j["id"] == job.id and j["state"] == "finished"
                      for j in alpha.api("GET", "jobs")), 10)
    capsys.readouterr()
    ip.run_line_magic("parallalx", "jobs")
    out = capsys.readouterr().out
    assert job.id in out and "notebook-pi" in out and "finished" in out
    ip.run_line_magic("parallalx", "jobs -o listed")
    mine = next(j for j in ip.user_ns["listed"] if j["id"] == job.id)
    assert mine["owner"]["kind"] in ("kernel", "python") and mine["workload"] == "pi"


def test_jobs_cancel_reaches_a_training_job_in_this_kernel(ip, alpha, dask_client) -> None:
    ip.use(alpha)
    ip.run_cell(
        "import functools, torch\nfrom torch import nn\ntorch.manual_seed(0)\n"
        "x = torch.randn(512, 8); y = (x.sum(1) > 0).long()\n"
        "model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "dataset = (x, y); loss_fn = nn.CrossEntropyLoss()\n"
        "optimizer = functools.partial(torch.optim.SGD, lr=0.1)\n"
    )
    ip.user_ns["client"] = dask_client
    ip.run_line_magic("parallalx", "run train model=model dataset=dataset loss_fn=loss_fn "
                                   "optimizer=optimizer epochs=2000 batch_size=16 -o tj")
    job = ip.user_ns["tj"]
    assert any(isinstance(s, TrainingDashboard) and s.job is job for s in ip.shown)
    wait_for(lambda: any(j["id"] == job.id and (j["progress"]["step"] or 0) > 0
                      for j in alpha.api("GET", "jobs")), 90)
    ip.run_line_magic("parallalx", f"jobs cancel {job.id}")
    with pytest.raises(Exception):  # noqa: B017 - TrainingCancelledError
        job.result(timeout=60)
    assert job.state == "cancelled"
    wait_for(lambda: alpha.api("GET", f"jobs/{job.id}")["state"] == "cancelled", 10)


def test_cell_launch_runs_the_cell_on_every_worker(ip, alpha, dask_client, tmp_path,
                                                   capsys) -> None:
    """`%%parallalx launch -- ARGS`: the cell is the script, torchrun-style on each rank."""
    ip.use(alpha)
    ip.user_ns["client"] = dask_client
    ip.run_cell_magic("parallalx", f"launch --name cell-launch -o lj -- {tmp_path} x", (
        "import os, sys\n"
        "import torch, torch.distributed as dist\n"
        "import parallalx_jupyter as px\n"
        "t = torch.ones(1)\n"
        "dist.all_reduce(t)\n"
        "open(os.path.join(sys.argv[1], f\"rank{os.environ['RANK']}\"), 'w').write(\n"
        "    f\"{__name__} {sys.argv[2]} {os.environ['WORLD_SIZE']} {int(t.item())}\")\n"
        "px.report(step=1, loss=0.25)\n"
        "print('rank', os.environ['RANK'], 'done')\n"))
    job = ip.user_ns["lj"]
    view = next(s for s in ip.shown if isinstance(s, JobView) and s.job is job)
    job.result(timeout=150)
    # what the ranks printed shows in the cell's job view, each line after its rank
    wait_for(lambda: "rank 1 done" in view.output.value, 10)
    assert "[rank 0 " in view.output.value and view.output.layout.display is None
    # ... and through the REST API (the panel, the CLI): `jobs output ID`
    wait_for(lambda: any(x["line"] == "rank 1 done" and x["rank"] == 1
                         for x in alpha.api("GET", f"jobs/{job.id}")["output"]), 10)
    capsys.readouterr()
    ip.run_line_magic("parallalx", f"jobs output {job.id}")
    shown = capsys.readouterr().out
    assert "] rank 1 done" in shown and "[rank 0 " in shown
    assert [(tmp_path / f"rank{r}").read_text() for r in range(2)] == ["__main__ x 2 2"] * 2
    assert job.history and job.history[-1]["loss"] == 0.25
    wait_for(lambda: alpha.api("GET", f"jobs/{job.id}")["state"] == "finished", 10)
    assert alpha.api("GET", f"jobs/{job.id}")["name"] == "cell-launch"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("run nosuch", "run: unknown workload 'nosuch'"),
        ("run sweep space={}", "run: sweep: missing parameter(s) objective"),
        ("run inference batch_size=0", "inference: missing parameter(s) model, dataset"),
        ("run pi samples=5", "pi: parameter 'samples': 5 is less than the minimum"),
        ("run sweep objective=undefined_name space='{\"a\": {\"type\": \"int\"}}'",
         "no variable 'undefined_name' in this notebook"),
        ("run sweep objective=nosuch.module:fn space={}", "cannot import 'nosuch.module:fn'"),
        ("jobs cancel nosuchjob", "no job 'nosuchjob'"),
        ("launch nosuch.py", "launch: no such script: nosuch.py"),
        ("launch", "launch: give a script, or use %%parallalx launch"),
    ],
)
def test_bad_input_is_one_line(ip, alpha, example_workload, line: str, message: str) -> None:
    ip.use(alpha)
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("parallalx", line)
    text = str(info.value)
    assert text.startswith("parallalx: ") and message in text and "\n" not in text, text


@pytest.mark.e2e  # the notebook starts a Dask LocalCluster in its kernel
def test_sweeps_and_inference_notebook(tmp_path) -> None:
    from test_notebook_training import _run_notebook

    texts = "\n".join(_run_notebook("sweeps_and_inference.ipynb", tmp_path))
    assert "workloads: inference, launch, sweep, train" in texts.replace("pi, ", "")
    best = next(t for t in texts.splitlines() if t.startswith("best:"))
    assert float(best.split()[-1]) >= 0.9
    assert "same as one local pass: True" in texts
    acc = next(t for t in texts.splitlines() if t.startswith("test accuracy"))
    assert float(acc.split()[-1]) >= 0.9
    assert "magic job: torch.Size([" in texts
