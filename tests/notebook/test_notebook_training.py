"""`%%parallalx train` and the TrainingDashboard against a real Dask
LocalCluster (worker processes, no TLS); the training notebooks run clean with nbclient."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbformat
import pytest
from IPython.core.error import UsageError
from local_dask import local_dask_client
from nbclient import NotebookClient

from parallalx_jupyter.notebook import training as training_module
from parallalx_jupyter.notebook.training import TrainingDashboard, sparkline

pytestmark = pytest.mark.timeout(180)

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"

SETUP = """
import functools, torch
from torch import nn
torch.manual_seed(0)
x = torch.randn(512, 8)
y = (x.sum(1) > 0).long()
"""

CELL = """
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
dataset = (x, y)
loss_fn = nn.CrossEntropyLoss()
optimizer = functools.partial(torch.optim.SGD, lr=0.1)
client = dask_client
"""


@pytest.fixture(scope="module")
def local_cluster():
    with local_dask_client() as client:
        yield client


def _wait(pred, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _clear(ip) -> None:
    for name in ("model", "dataset", "loss_fn", "optimizer", "client", "job"):
        ip.user_ns.pop(name, None)


def test_train_magic_runs_to_done_with_per_worker_bars(ip, local_cluster, walk_widgets) -> None:
    _clear(ip)
    ip.run_cell(SETUP)
    ip.user_ns["dask_client"] = local_cluster
    ip.run_cell_magic("parallalx", "train --epochs 3 --batch-size 32 --strategy ddp -o myjob", CELL)
    job = ip.user_ns["myjob"]
    assert "job" not in ip.user_ns
    dash = next(s for s in ip.shown if isinstance(s, TrainingDashboard))
    assert dash.job is job
    model = job.result(timeout=120)
    _wait(lambda: dash.state == "finished", 10)
    assert dash.final.value == "<b>done</b>"
    assert dash.worker_count == 2 and len(dash.workers.children) == 2
    assert all(b.value == 1.0 and b.bar_style == "success" for b, _ in dash._worker_bars.values())
    assert dash.overall.value == 1.0 and dash.cancel_button.disabled
    assert "samples/s" in dash.stats.value and "ETA" in dash.stats.value
    assert "<polyline" in dash.loss_plot.value
    assert "done" in repr(dash) and "2 worker(s)" in repr(dash)
    assert model is not None
    assert dash.cancel_button in walk_widgets(dash)
    assert job.id in training_module.JOBS


def test_cancel_button_stops_a_long_job(ip, local_cluster) -> None:
    _clear(ip)
    ip.run_cell(SETUP)
    ip.user_ns["dask_client"] = local_cluster
    ip.run_cell_magic("parallalx", "train --epochs 2000 --batch-size 16", CELL)
    job = ip.user_ns["job"]
    dash = next(s for s in ip.shown if isinstance(s, TrainingDashboard))
    _wait(lambda: dash.progress.get("global_step", 0) > 0, 90)
    dash.cancel_button.click()
    with pytest.raises(Exception):  # noqa: B017 - TrainingCancelledError
        job.result(timeout=60)
    _wait(lambda: dash.state == "cancelled", 10)
    assert job.state == "cancelled"
    assert dash.progress["global_step"] < dash.progress["total_steps"]
    assert "cancelled" in dash.final.value and dash.cancel_button.disabled


def test_missing_names_is_one_line_error(ip) -> None:
    _clear(ip)
    with pytest.raises(UsageError) as err:
        ip.run_cell_magic("parallalx", "train", "model = 1\n")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith("parallalx: train:")
    assert "dataset, loss_fn, optimizer" in text and "model," not in text.split("(")[0]
    _clear(ip)


def test_help_mentions_factories(ip, capsys) -> None:
    ip.run_line_magic("parallalx", "train --help")
    out = capsys.readouterr().out
    assert "factor" in out and "--checkpoint-dir" in out and "--epochs" in out


def test_dashboard_escapes_error_text_and_sparkline_is_numbers_only() -> None:
    class FakeJob:
        id = "abc"
        state = "running"
        progress: dict = {}
        history: list = []
        events: list = []

        def subscribe(self, cb, kinds=None):
            self.cb = cb
            return lambda: None

        def done(self):
            return False

        def cancel(self):
            return True

    job = FakeJob()
    dash = TrainingDashboard(job)
    job.cb({"kind": "progress", "ranks": [{"rank": 0, "worker": "<b>w</b>", "global_step": 1}],
            "total_steps": 4, "fraction": 0.25, "loss": 1.0, "stragglers": [0]})
    job.cb({"kind": "state", "state": "failed", "error": "<script>x</script>"})
    assert "<script>" not in dash.final.value and "&lt;script&gt;" in dash.final.value
    assert "<b>w</b>" not in dash.workers.children[0].children[1].value
    assert "rank 0" in dash.stats.value
    svg = sparkline([3.0, 2.0, float("nan"), 1.0])
    assert "<polyline" in svg


def test_dashboard_names_the_lost_device_while_recovering_then_runs_again() -> None:
    from parallalx_jupyter.jobs.handle import Job

    job = Job("rc1", "train", "recovery")
    dash = TrainingDashboard(job)
    ranks = [{"rank": r, "worker": w, "global_step": 40} for r, w in enumerate(("tls://a:1",
                                                                                  "tls://b:2"))]
    job.hub.emit({"kind": "progress", "ranks": ranks, "global_step": 40, "total_steps": 100,
                  "fraction": 0.4, "loss": 0.5, "samples_per_s": 900.0, "eta_s": 360.0})
    assert "ETA 6" in dash.stats.value
    lost = "lost laptop: no heartbeat for 4 s and no rank made progress; re-forming"
    job.hub.emit({"kind": "state", "state": "recovering", "message": lost,
                  "lost_workers": ["tls://b:2"], "lost_devices": ["laptop"]})
    assert dash.final.value.startswith("state: recovering") and "lost laptop" in dash.final.value
    assert "ETA 6" not in dash.stats.value and "re-forming" in dash.stats.value  # no stale ETA
    assert dash.overall.bar_style == "warning"
    assert [b.children[0].bar_style for b in dash.workers.children] == ["info", "danger"]
    assert job.state == "recovering" and job.state_message == lost
    job.hub.emit({"kind": "restart", "lost_devices": ["laptop"]})
    assert "after losing laptop" in dash.stats.value
    job.hub.emit({"kind": "state", "state": "running"})
    assert dash.final.value == "state: running" and dash.overall.bar_style == ""
    assert job.state_message is None


#: what dask's nanny says when the notebook's last cell closes its LocalCluster on a loaded
#: machine and a worker process takes over 4 s to exit (it is then killed): teardown, not a
#: problem of the notebook (seen once in two full runs, under the suite's parallel load)
_NANNY_TEARDOWN = re.compile(
    r"^\S+ \S+ - distributed\.nanny - WARNING - Worker process still alive after "
    r"[\d.]+ seconds, killing$")


def _teardown_only(text: str) -> bool:
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and all(_NANNY_TEARDOWN.match(line) for line in lines)


def _run_notebook(name: str, tmp_path: Path, env: dict[str, str] | None = None) -> list[str]:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    full = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    full.update(env or {})
    NotebookClient(nb, timeout=150, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=full)
    texts = []
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                assert o.name != "stderr" or _teardown_only(o.text), o.text
                texts.append(o.text)
            elif o.output_type in ("display_data", "execute_result"):
                texts.append(o.data.get("text/plain", ""))
            elif o.output_type == "error":
                raise AssertionError(f"{o.ename}: {o.evalue}")
    return texts


@pytest.mark.e2e  # the notebook starts a Dask LocalCluster in its kernel
def test_bring_your_own_dask_cluster_notebook(tmp_path) -> None:
    texts = "\n".join(_run_notebook("bring_your_own_dask_cluster.ipynb", tmp_path))
    line = next(t for t in texts.splitlines() if t.startswith("accuracy"))
    assert float(line.split()[1]) >= 0.9


def test_train_on_your_devices_notebook(make_device, tmp_path) -> None:
    alpha = make_device("alpha")
    texts = "\n".join(_run_notebook(
        "train_on_your_devices.ipynb", tmp_path,
        {"PARALLALX_URL": alpha.url, "PARALLALX_TOKEN": alpha.token,
         "PARALLALX_HOME": str(alpha.home / "state")}))
    assert "this device: alpha" in texts
    assert "1 worker(s) in this device's cluster" in texts
    assert "TrainingDashboard(job " in texts
    line = next(t for t in texts.splitlines() if t.startswith("accuracy"))
    assert float(line.split()[1]) >= 0.9
    assert "finished" in texts.split("accuracy")[-1]
