"""Hyperparameter sweeps: Optuna decides, the devices run the trials.

The study (sampler, pruner, bookkeeping) lives in the job's thread on the main device and uses
Optuna's ask-and-tell interface; each trial is one Dask task running the user's objective
``objective(params, report) -> value`` (or ``(value, model)``) on whichever worker has a free
thread, so as many trials run at once as the cluster has worker threads. ``report(value, step)``
sends an intermediate value back as a worker event (no Dask client inside the task: the
hardened cluster refuses those); the main side feeds it to ``trial.report`` and, when the
pruner says so, cancels the task, whose next ``report`` then raises ``optuna.TrialPruned``.
A trial lost with its device (Dask gives up on it) is re-queued with the same parameters.
"""

from __future__ import annotations

import asyncio
import html
import math
import queue
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..jobs.failures import classify_failure
from ..jobs.topics import JobTopics
from ..wire import from_wire
from .base import JobContext, Workload, WorkloadError, validate_params

_SPACE_ITEM = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["float", "int", "categorical"]},
        "low": {"type": "number"},
        "high": {"type": "number"},
        "log": {"type": "boolean"},
        "step": {"type": "number", "exclusiveMinimum": 0},
        "choices": {"type": "array", "minItems": 1,
                    "items": {"type": ["string", "number", "boolean", "null"]}},
    },
    "additionalProperties": False,
}


class TrialReporter:
    """The ``report`` argument of an objective running on a worker."""

    def __init__(self, topic: str, number: int) -> None:
        from distributed import get_worker

        self.worker = get_worker()
        self.key = self.worker.get_current_task()
        self.topic = topic
        self.number = number

    def should_prune(self) -> bool:
        """True once the main side cancelled this trial (the pruner decided against it)."""
        ts = self.worker.state.tasks.get(self.key)
        return ts is None or ts.state in ("cancelled", "released", "forgotten")

    def __call__(self, value: float, step: int) -> None:
        """Report an intermediate value; raises ``optuna.TrialPruned`` if the trial was pruned."""
        import optuna

        if self.should_prune():
            raise optuna.TrialPruned(f"trial {self.number} pruned at step {step}")
        self.worker.log_event(
            self.topic, {"trial": self.number, "step": int(step), "value": float(value)}
        )


def run_trial(objective: bytes, params: dict[str, Any], topic: str, number: int) -> bytes:
    """The Dask task of one trial (runs on a worker); ``objective`` comes cloudpickled, so a
    function from any module (a notebook's, a test's) travels by value where registered. The
    outcome travels back as data (``wire``): a returned model arrives as its ``state_dict``."""
    import cloudpickle
    import optuna

    from ..wire import to_wire

    (objective,) = cloudpickle.loads(objective)
    started = time.perf_counter()
    reporter = TrialReporter(topic, number)
    try:
        out = objective(dict(params), reporter)
    except optuna.TrialPruned:
        return to_wire({"state": "pruned", "seconds": time.perf_counter() - started})
    model = None
    if isinstance(out, tuple) and len(out) == 2:
        out, model = out
    return to_wire({"state": "complete", "value": float(out), "model": model,
                    "seconds": time.perf_counter() - started,
                    "worker": reporter.worker.address})


@dataclass
class SweepResult:
    """What a sweep hands back: the best trial, its model, every trial as a table."""

    best_params: dict[str, Any]
    best_value: float
    best_model: Any
    best_trial: int
    direction: str
    table: Any  # pandas.DataFrame, one row per trial
    study: Any = field(repr=False)

    def plot(self, width: int = 420, height: int = 160) -> str:
        """SVG of each trial's value (pruned ones hollow) and the best so far."""
        rows = [(int(r.number), float(r.value), str(r.state))
                for r in self.table.itertuples() if _finite(r.value)]
        if not rows:
            return f'<svg width="{width}" height="{height}"></svg>'
        lo = min(v for _, v, _ in rows)
        hi = max(v for _, v, _ in rows)
        span = (hi - lo) or 1.0
        n = max(n for n, _, _ in rows) or 1

        def xy(num: int, v: float) -> tuple[float, float]:
            return (8 + num / n * (width - 16), height - 8 - (v - lo) / span * (height - 16))

        dots = "".join(
            '<circle cx="{:.1f}" cy="{:.1f}" r="3" {}/>'.format(
                *xy(num, v),
                'fill="#1f77b4"' if state == "COMPLETE" else
                'fill="none" stroke="#999"',
            )
            for num, v, state in rows
        )
        best, line = None, []
        for num, v, state in sorted(rows):
            if state != "COMPLETE":
                continue
            if best is None or (v < best if self.direction == "minimize" else v > best):
                best = v
            line.append("{:.1f},{:.1f}".format(*xy(num, best)))
        path = f'<polyline fill="none" stroke="#d62728" points="{" ".join(line)}"/>'
        return (f'<svg width="{width}" height="{height}" style="background:#fafafa">'
                f"{path}{dots}</svg>")

    def _repr_html_(self) -> str:
        params = ", ".join(f"{html.escape(str(k))}={html.escape(repr(v))}"
                           for k, v in self.best_params.items())
        return (f"<div><b>Best trial {self.best_trial}</b>: {self.best_value:.6g} "
                f"({params})</div>{self.plot()}{self.table.to_html(max_rows=50)}")


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class SweepWorkload(Workload):
    name = "sweep"
    description = (
        "Hyperparameter sweep with Optuna: trials spread over the devices, bad ones pruned "
        "early, best parameters and model back with a results table"
    )
    parameters = {
        "type": "object",
        "additionalProperties": False,
        "required": ["objective", "space"],
        "properties": {
            "objective": {"x-python": True,
                          "description": "objective(params, report) -> value or (value, model)"},
            "space": {"type": "object", "minProperties": 1,
                      "additionalProperties": _SPACE_ITEM,
                      "description": "name -> {type: float|int|categorical, low, high, log, "
                                     "step, choices}"},
            "n_trials": {"type": ["integer", "null"], "minimum": 1, "default": None,
                         "description": "default: the whole grid (grid) or 20"},
            "direction": {"enum": ["minimize", "maximize"], "default": "minimize"},
            "sampler": {"enum": ["tpe", "random", "grid"], "default": "tpe"},
            "pruner": {"enum": ["median", "successive_halving", "none"], "default": "median"},
            "parallel": {"type": ["integer", "null"], "minimum": 1, "default": None,
                         "description": "trials at once; default: the cluster's worker threads"},
            "seed": {"type": "integer", "default": 0},
            "max_retries": {"type": "integer", "minimum": 0, "default": 2,
                            "description": "re-runs of a trial lost with its device"},
        },
    }

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        out = validate_params(self.name, self.parameters, params)
        for key, spec in out["space"].items():
            kind = spec["type"]
            if kind == "categorical":
                if "choices" not in spec:
                    raise WorkloadError(f"sweep: space '{key}': categorical needs 'choices'")
            elif "low" not in spec or "high" not in spec or not spec["low"] < spec["high"]:
                raise WorkloadError(f"sweep: space '{key}': {kind} needs low < high")
            elif spec.get("log") and spec["low"] <= 0:
                raise WorkloadError(f"sweep: space '{key}': log scale needs low > 0")
        if out["sampler"] == "grid":
            out["grid"] = _grid(out["space"])
            if out["n_trials"] is None:
                out["n_trials"] = math.prod(len(v) for v in out["grid"].values())
        elif out["n_trials"] is None:
            out["n_trials"] = 20
        return out

    def job_name(self, params: dict[str, Any]) -> str:
        return f"sweep {getattr(params['objective'], '__name__', '')}".strip()

    def summarize(self, result: Any) -> dict[str, Any]:
        states = result.table["state"].value_counts().to_dict() if len(result.table) else {}
        return {"best_params": result.best_params, "best_value": result.best_value,
                "best_trial": result.best_trial, "trials": {str(k): int(v)
                                                            for k, v in states.items()}}

    def run(self, ctx: JobContext, params: dict[str, Any]) -> SweepResult:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(
            direction=params["direction"],
            sampler=_sampler(params),
            pruner=_pruner(params["pruner"]),
        )
        distributions = _distributions(params["space"])
        return _SweepRun(ctx, params, study, distributions).run()


class _SweepRun:
    def __init__(self, ctx: JobContext, params: dict[str, Any], study: Any, dists: dict) -> None:
        self.ctx = ctx
        self.params = params
        self.study = study
        self.dists = dists
        self.topic = f"parallalx-sweep-{ctx.job.id}-{uuid.uuid4().hex[:6]}"
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.running: dict[Any, tuple[Any, int]] = {}  # future -> (optuna trial, attempt)
        self.by_number: dict[int, Any] = {}
        self.reported: dict[int, set[int]] = {}
        self.done = 0
        self.pruned = 0
        self.best_model: Any = None
        # (params, attempt, the lost trial's grid point under a grid sampler)
        self.retry: list[tuple[dict[str, Any], int, dict[str, Any]]] = []
        self.started = time.monotonic()
        from ..training.spec import dumps_for_workers

        self.objective = dumps_for_workers({"objective": params["objective"]})

    def _capacity(self) -> int:
        if self.params["parallel"]:
            return int(self.params["parallel"])
        info = self.ctx.worker_info()
        return max(1, sum(int(w.get("nthreads", 1)) for w in info.values()))

    def _submit(
        self, attempt_params: dict[str, Any] | None = None, attempt: int = 0,
        grid_point: dict[str, Any] | None = None,
    ) -> None:
        if attempt_params is not None:
            self.study.enqueue_trial(attempt_params)
        trial = self.study.ask(self.dists)
        set_grid_point(self.study, trial, grid_point or {})
        self.by_number[trial.number] = trial
        fut = self.ctx.client.submit(
            run_trial, self.objective, dict(trial.params), self.topic, trial.number,
            pure=False, key=f"parallalx-trial-{self.ctx.job.id}-{trial.number}",
        )
        self.running[fut] = (trial, attempt)

    def run(self) -> SweepResult:
        from distributed import wait

        client = self.ctx.client
        # released at the end, on the scheduler and here: a finished sweep holds nothing there
        topics = JobTopics(client)
        topics.subscribe(self.topic, lambda ev: self.events.put(ev[1]))
        asked = 0
        try:
            while True:
                self._drain_reports()
                if self.ctx.cancelled:
                    client.cancel(list(self.running), force=True)
                    self.ctx.check_cancelled()
                while self.retry and len(self.running) < self._capacity():
                    self._submit(*self.retry.pop(0))
                while asked < self.params["n_trials"] and len(self.running) < self._capacity():
                    self._submit()
                    asked += 1
                if not self.running:
                    break
                try:
                    finished = wait(list(self.running), timeout=0.2,
                                    return_when="FIRST_COMPLETED")
                except (TimeoutError, asyncio.TimeoutError):
                    continue
                for fut in finished.done:
                    self._finish(fut)
        finally:
            topics.release()
        return self._result()

    def _drain_reports(self) -> None:
        while True:
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return
            trial = self.by_number.get(int(ev.get("trial", -1)))
            fut = next((f for f, (t, _) in self.running.items() if t is trial), None)
            if trial is None or fut is None:
                continue
            step = int(ev["step"])
            seen = self.reported.setdefault(trial.number, set())
            if step in seen:
                continue  # a re-run after a lost device reports its steps again
            seen.add(step)
            trial.report(float(ev["value"]), step)
            if trial.should_prune():
                self.ctx.client.cancel([fut], force=True)
                self.running.pop(fut)
                self._tell(trial, "pruned", step=step)

    def _finish(self, fut: Any) -> None:
        from optuna.trial import TrialState

        if fut not in self.running:
            return
        trial, attempt = self.running.pop(fut)
        if fut.status == "finished":
            out = from_wire(fut.result())
            if out["state"] == "pruned":
                self._tell(trial, "pruned")
                return
            _tell(self.study, trial, out["value"])
            self.done += 1
            if self.study.best_trial.number == trial.number:
                self.best_model = out["model"]
            self._emit(trial, "complete", out["value"], out.get("worker"), out["seconds"])
            return
        exc = fut.exception() if fut.status == "error" else None
        # "lost": the trial had finished but its result died with its device before it was
        # fetched; like a killed worker, that is the device's loss, not the trial's failure
        lost = classify_failure(exc, fut.status) == "device"
        _tell(self.study, trial, state=TrialState.FAIL)
        if lost and attempt < self.params["max_retries"]:
            self.retry.append((dict(trial.params), attempt + 1, grid_point(self.study, trial)))
            why = str(exc) if exc is not None else "its result was lost with its device"
            self._emit(trial, "lost", None, None, None, error=why)
            return
        raise WorkloadError(
            f"sweep: trial {trial.number} ({trial.params}) failed: {exc}"
        ) from exc

    def _tell(self, trial: Any, state: str, step: int | None = None) -> None:
        from optuna.trial import TrialState

        _tell(self.study, trial, state=TrialState.PRUNED)
        self.pruned += 1
        self._emit(trial, state, None, None, None, step=step)

    def _emit(self, trial: Any, state: str, value: Any, worker: Any, seconds: Any,
              **extra: Any) -> None:
        self.ctx.record("trial", number=trial.number, params=dict(trial.params), state=state,
                        value=value, worker=worker, seconds=seconds, **extra)
        ended = self.done + self.pruned
        total = self.params["n_trials"]
        best = self._best()
        elapsed = time.monotonic() - self.started
        eta = elapsed / ended * (total - ended) if ended else None
        best_text = f", best {best.value:.4g} {best.params}" if best is not None else ""
        self.ctx.progress(
            step=min(ended, total), total=total, loss=None if best is None else best.value,
            eta_s=eta, workers=len(self.ctx.workers()),
            message=f"sweep: {ended}/{total} trials, {self.pruned} pruned{best_text}",
            running=len(self.running),
        )

    def _best(self) -> Any:
        try:
            return self.study.best_trial
        except ValueError:
            return None

    def _result(self) -> SweepResult:
        best = self._best()
        if best is None:
            raise WorkloadError("sweep: no trial completed (all pruned or failed)")
        table = self.study.trials_dataframe(attrs=("number", "value", "params", "state",
                                                   "duration"))
        return SweepResult(best_params=dict(best.params), best_value=float(best.value),
                           best_model=self.best_model, best_trial=best.number,
                           direction=self.params["direction"], table=table, study=self.study)


GRID_POINT_ATTRS = ("grid_id", "search_space")  # what GridSampler keeps on a trial


def grid_point(study: Any, trial: Any) -> dict[str, Any]:
    """The grid sampler's bookkeeping of ``trial`` (empty under other samplers)."""
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    return {k: attrs[k] for k in GRID_POINT_ATTRS if k in attrs}


def set_grid_point(study: Any, trial: Any, point: dict[str, Any]) -> None:
    """Give a re-run the lost trial's grid point. Optuna's GridSampler gives an enqueued trial
    none, yet looks its grid id up when the last unvisited point is told (KeyError 'grid_id')."""
    for key, value in point.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)


def _tell(study: Any, trial: Any, value: float | None = None, state: Any = None) -> None:
    """``study.tell`` for ask-and-tell: the grid sampler calls ``study.stop()`` once its grid is
    used up, which Optuna only allows inside ``optimize``; the trial is stored regardless and
    this run stops by its own trial count."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as err:
        if "Study.stop" not in str(err):
            raise


def _grid(space: dict[str, Any]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            grid[key] = list(spec["choices"])
        elif spec["type"] == "int":
            step = int(spec.get("step", 1))
            grid[key] = list(range(int(spec["low"]), int(spec["high"]) + 1, step))
        elif "step" in spec:
            n = int(round((spec["high"] - spec["low"]) / spec["step"]))
            grid[key] = [spec["low"] + i * spec["step"] for i in range(n + 1)]
        else:
            raise WorkloadError(
                f"sweep: grid sampler: space '{key}' is a continuous float; give it a 'step' "
                "or 'choices'"
            )
    if math.prod(len(v) for v in grid.values()) > 100_000:
        raise WorkloadError("sweep: the grid has more than 100,000 points")
    return grid


def _distributions(space: dict[str, Any]) -> dict[str, Any]:
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec["type"] == "categorical":
            out[key] = CategoricalDistribution(spec["choices"])
        elif spec["type"] == "int":
            out[key] = IntDistribution(int(spec["low"]), int(spec["high"]),
                                       log=bool(spec.get("log", False)),
                                       step=int(spec.get("step", 1)))
        else:
            out[key] = FloatDistribution(float(spec["low"]), float(spec["high"]),
                                         log=bool(spec.get("log", False)),
                                         step=spec.get("step"))
    return out


def _sampler(params: dict[str, Any]) -> Any:
    import optuna

    seed = params["seed"]
    if params["sampler"] == "grid":
        return optuna.samplers.GridSampler(params["grid"], seed=seed)
    if params["sampler"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


__all__ = ["SweepResult", "SweepWorkload", "TrialReporter", "run_trial"]
