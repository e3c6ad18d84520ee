"""Sweeps on a real two-worker TLS Dask cluster: same best as a serial search, pruning works."""

from __future__ import annotations

import sys
import threading
import time

import cloudpickle
import pytest

from parallalx_jupyter.workloads.base import WorkloadError
from parallalx_jupyter.workloads.runner import start

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.timeout(240)

GRID = {
    "lr": {"type": "categorical", "choices": [0.0005, 0.01, 0.3]},
    "hidden": {"type": "categorical", "choices": [8, 64]},
}


def digits_objective(params, report, epochs: int = 4):  # noqa: ANN001, ANN201
    """Validation accuracy of a small MLP on scikit-learn's digits (deterministic)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    x_tr, x_va = (torch.tensor(a, dtype=torch.float32) / 16 for a in (x_tr, x_va))
    y_tr, y_va = torch.tensor(y_tr), torch.tensor(y_va)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, params["hidden"]), nn.ReLU(),
                          nn.Linear(params["hidden"], 10))
    opt = torch.optim.SGD(model.parameters(), lr=params["lr"])
    acc = 0.0
    for epoch in range(epochs):
        for i in range(0, len(x_tr), 64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_tr[i:i + 64]), y_tr[i:i + 64]).backward()
            opt.step()
        with torch.no_grad():
            acc = (model(x_va).argmax(1) == y_va).float().mean().item()
        report(acc, epoch)
    return acc, model


def slow_objective(params, report):  # noqa: ANN001, ANN201
    """Value = x at every step; each step takes 0.2 s, so a pruned trial visibly stops early."""
    for step in range(10):
        time.sleep(0.2)
        report(params["x"], step)
    return params["x"]


def test_grid_sweep_finds_the_serial_best(cluster2) -> None:
    job = start("sweep", {"objective": digits_objective, "space": GRID, "sampler": "grid",
                          "direction": "maximize", "pruner": "none"},
                client=cluster2.client, report=False)
    result = job.result(timeout=200)

    serial = {}
    for lr in GRID["lr"]["choices"]:
        for hidden in GRID["hidden"]["choices"]:
            serial[(lr, hidden)] = digits_objective({"lr": lr, "hidden": hidden},
                                                    lambda v, s: None)[0]
    best = max(serial, key=serial.get)
    print(f"\nsweep best {result.best_params} = {result.best_value:.4f}; serial best {best}")
    assert (result.best_params["lr"], result.best_params["hidden"]) == best
    assert result.best_value == pytest.approx(serial[best], abs=1e-6)
    assert len(result.table) == 6 and set(result.table["state"]) == {"COMPLETE"}
    # a model comes back from a device as its state_dict (data), never as a pickled object
    assert result.best_model["0.weight"].shape == (best[1], 64)
    workers = {e["worker"] for e in job.events if e.get("kind") == "trial"}
    assert len(workers) == 2  # trials ran on both devices
    assert "<svg" in result._repr_html_() and "<table" in result._repr_html_()
    assert job.progress["step"] == job.progress["total"] == 6


def test_bad_trials_are_pruned_early(cluster2) -> None:
    space = {"x": {"type": "categorical", "choices": [0, 1, 2, 3, 4, 5, 6, 7]}}
    t0 = time.perf_counter()
    job = start("sweep", {"objective": slow_objective, "space": space, "sampler": "grid",
                          "direction": "minimize", "pruner": "median", "parallel": 2},
                client=cluster2.client, report=False)
    result = job.result(timeout=200)
    elapsed = time.perf_counter() - t0
    states = dict(zip(result.table["params_x"], result.table["state"], strict=True))
    pruned = [x for x, s in states.items() if s == "PRUNED"]
    print(f"\nstates {states}; {elapsed:.1f}s")
    assert result.best_params == {"x": 0}
    assert pruned and all(x > 0 for x in pruned)
    trials = [e for e in job.events if e.get("kind") == "trial" and e["state"] == "pruned"]
    assert trials and all(e["step"] is None or e["step"] < 9 for e in trials)
    secs = result.table["duration"].dt.total_seconds()
    full = secs[result.table["state"] == "COMPLETE"]
    cut = secs[result.table["state"] == "PRUNED"]
    assert cut.max() < full.min()  # a pruned trial stopped before a full one could finish
    # the finished sweep holds nothing: no topic on the scheduler, no handler on the client
    client = cluster2.client
    assert [t for t in client._event_handlers if t.startswith("parallalx-sweep-")] == []
    assert client.run_on_scheduler(_sweep_topics) == []


def _sweep_topics(dask_scheduler) -> list[str]:  # noqa: ANN001 - a distributed.Scheduler
    return [t for t in dask_scheduler._broker._topics if t.startswith("parallalx-sweep-")]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"space": GRID}, "missing parameter(s) objective"),
        ({"objective": slow_objective, "space": {}}, "space"),
        ({"objective": slow_objective, "space": GRID, "n_trials": 0}, "n_trials"),
        ({"objective": slow_objective, "space": GRID, "sampler": "annealing"}, "sampler"),
        ({"objective": slow_objective, "space": {"a": {"type": "float", "low": 1, "high": 0}}},
         "low < high"),
        ({"objective": slow_objective, "space": {"a": {"type": "float", "low": 0, "high": 1}},
          "sampler": "grid"}, "continuous"),
        ({"objective": "no.such.module:fn", "space": GRID}, "cannot import"),
        ({"objective": slow_objective, "space": GRID, "colour": "blue"}, "unknown parameter"),
    ],
)
def test_bad_parameters_are_one_clear_line(params, message) -> None:
    with pytest.raises(WorkloadError, match=None) as info:
        start("sweep", params, client="tcp://127.0.0.1:1", report=False)
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("sweep:"), text


def test_an_objective_that_cannot_travel_is_named_with_the_way_out(cluster2) -> None:
    lock = threading.Lock()

    def holds_a_lock(params, reporter):  # noqa: ANN001, ANN202 - a closure over a lock
        with lock:
            return params["x"]

    job = start("sweep", {"objective": holds_a_lock, "space": GRID}, client=cluster2.client,
                report=False)
    with pytest.raises(TypeError, match=r"^objective cannot be sent to the workers .*inside the"):
        job.result(timeout=60)


def test_unknown_workload_is_one_clear_line() -> None:
    with pytest.raises(WorkloadError, match="unknown workload 'sweeep'; available: .*sweep"):
        start("sweeep", {}, client="tcp://127.0.0.1:1", report=False)




def test_a_lost_device_only_costs_its_running_trials(cluster3) -> None:
    space = {"x": {"type": "categorical", "choices": [5, 4, 3, 2, 1, 0]}}
    job = start("sweep", {"objective": slow_objective, "space": space, "sampler": "grid",
                          "direction": "minimize", "pruner": "none"},
                client=cluster3.client, report=False)
    deadline = time.monotonic() + 60
    while not any(e.get("kind") == "trial" for e in job.events) and not job.done():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cluster3.signal("w0", 9)  # SIGKILL one device while trials run on it
    result = job.result(timeout=180)
    assert result.best_params == {"x": 0} and result.best_value == 0
    done = result.table[result.table["state"] == "COMPLETE"]
    assert sorted(done["params_x"]) == [0, 1, 2, 3, 4, 5]  # every grid point, once


def test_a_rerun_keeps_the_lost_trials_grid_point() -> None:
    # The race behind a lost device: the re-run (enqueued with the lost trial's parameters) is
    # the last trial told while one grid point is unvisited. Optuna's GridSampler then looks up
    # the re-run's grid id, which an enqueued trial lacks, unless the sweep copied it over.
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState

    from parallalx_jupyter.workloads.sweep import _tell, grid_point, set_grid_point

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(sampler=optuna.samplers.GridSampler({"x": [1, 2, 3]}))
    dists = {"x": CategoricalDistribution([1, 2, 3])}
    lost, other, done = (study.ask(dists) for _ in range(3))
    _tell(study, done, 0.5)
    _tell(study, lost, state=TrialState.FAIL)  # its device died
    study.enqueue_trial(dict(lost.params))
    rerun = study.ask(dists)
    set_grid_point(study, rerun, grid_point(study, lost))
    _tell(study, rerun, 2.0)
    _tell(study, other, 1.0)
    assert [t.state.name for t in study.trials] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert rerun.params == lost.params
