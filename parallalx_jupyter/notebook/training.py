"""`%%parallalx train` and `%parallalx jobs`: start a training job from a cell, watch it live.

    %%parallalx train --epochs 5 --batch-size 64 -o job
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    dataset = (x, y)
    loss_fn = nn.CrossEntropyLoss()
    optimizer = functools.partial(torch.optim.Adam, lr=3e-3)

The cell body runs in the notebook's namespace; it (or an earlier cell) defines `model`,
`dataset`, `loss_fn` and `optimizer` (objects or factories, as `train()` takes them) and
optionally `client` (a Dask `Client` or scheduler address). The job runs in the background; the
cell shows a `TrainingDashboard` and returns at once.
"""

from __future__ import annotations

import html
import math
import threading
from typing import Any

import ipywidgets as widgets

from ..jobs.handle import JobCancelledError, cancelled_text
from ..text import plain, rate, speed_eta
from .magics import Context, Result, argument, magic_error, prefixed, subcommand

REQUIRED = ("model", "dataset", "loss_fn", "optimizer")
FINAL_STATES = ("finished", "failed", "cancelled")
LOSS_POINTS = 200

#: every job started from this kernel (`%%parallalx train`, `%parallalx run`), oldest first
JOBS: dict[str, Any] = {}
_JOBS_LOCK = threading.Lock()


def _num(value: Any, default: float = 0.0) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return default
    return out if math.isfinite(out) else default


def sparkline(values: list[float], width: int = 320, height: int = 60) -> str:
    """An SVG polyline of `values` (numbers only: nothing user-provided reaches the markup)."""
    pts = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if len(pts) < 2:
        return f'<svg width="{width}" height="{height}"></svg>'
    if len(pts) > LOSS_POINTS:  # keep the markup small: evenly spaced samples
        step = len(pts) / LOSS_POINTS
        pts = [pts[int(i * step)] for i in range(LOSS_POINTS)] + [pts[-1]]
    lo, hi = min(pts), max(pts)
    span = hi - lo or 1.0
    coords = " ".join(
        f"{i * (width - 4) / (len(pts) - 1) + 2:.1f},"
        f"{height - 2 - (v - lo) / span * (height - 4):.1f}"
        for i, v in enumerate(pts)
    )
    return (
        f'<svg width="{width}" height="{height}" style="background:#fafafa">'
        f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{coords}"/>'
        f"</svg><div style='font-size:smaller'>loss {pts[-1]:.4g} (min {lo:.4g}, "
        f"max {hi:.4g})</div>"
    )


class TrainingDashboard(widgets.VBox):
    """Live view of a `TrainingJob`: overall and per-worker progress, samples/s, communication
    share, stragglers, ETA, a loss plot, a Cancel button and the final state. Updated from the
    job's background thread (its `subscribe` callbacks) under a lock."""

    def __init__(self, job: Any) -> None:
        super().__init__()
        self.job = job
        self._lock = threading.Lock()
        self._losses: list[float] = []
        self._worker_bars: dict[str, tuple[widgets.FloatProgress, widgets.HTML]] = {}
        self._device_of: dict[str, str] = {}  # worker address -> the label its bar shows
        self.title = widgets.HTML(html.escape(f"training job {job.id}"))
        self.overall = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, description="total")
        self.stats = widgets.HTML("")
        self.workers = widgets.VBox([])
        self.loss_plot = widgets.HTML(sparkline([]))
        self.cancel_button = widgets.Button(description="Cancel", button_style="warning")
        self.cancel_button.on_click(self._on_cancel)
        self.final = widgets.HTML("")
        self.state = str(getattr(job, "state", "pending"))
        self.error = ""
        self.progress: dict[str, Any] = {}
        self.children = (self.title, self.overall, self.stats, self.workers, self.loss_plot,
                         self.cancel_button, self.final)
        with self._lock:
            for rec in list(getattr(job, "history", [])):
                self._losses.append(_num(rec.get("loss"), math.nan))
        self._unsubscribe = job.subscribe(self.on_record)
        # records sent before the subscription: start from what the job already knows
        if job.progress:
            self.on_record(dict(job.progress), history=False)
        for rec in [e for e in list(job.events) if e.get("kind") == "state"][-1:]:
            self.on_record(rec)
        if job.done() and self.state not in FINAL_STATES:
            exc = job.exception(0)
            if isinstance(exc, JobCancelledError):
                self.on_record({"kind": "state", "state": "cancelled",
                                "message": cancelled_text(exc)})
            else:
                self.on_record({"kind": "state", "state": "failed" if exc else "finished",
                                "error": str(exc) if exc else ""})

    # ------------------------------------------------------------------ updates
    def on_record(self, rec: dict[str, Any], history: bool = True) -> None:
        kind = rec.get("kind")
        with self._lock:
            if kind == "progress":
                self._progress(rec, history)
            elif kind == "state":
                self._state(rec)
            elif kind == "restart":
                lost = ", ".join(str(d) for d in rec.get("lost_devices") or []) or "a worker"
                self.stats.value += html.escape(f" · group re-formed after losing {lost}")
            elif kind == "resume":  # stays under the title: how the run relates to the last
                for note in [rec.get("text"), *(rec.get("hyperparameters") or [])]:
                    if note:
                        self.title.value += "<br>" + html.escape(str(note)[:500])

    def _progress(self, rec: dict[str, Any], history: bool) -> None:
        self.progress = rec
        if history:
            self._losses.append(_num(rec.get("loss"), math.nan))
        self.overall.value = min(max(_num(rec.get("fraction")), 0.0), 1.0)
        total = int(_num(rec.get("total_steps"))) or 1
        ranks = rec.get("ranks") or []
        by_device = rec.get("samples_by_device") or {}
        for r in ranks:
            # the device's name (the driver's ``_label``), never a worker address
            device = plain(r.get("device") or f"rank {int(_num(r.get('rank')))}", 80)
            self._device_of[str(r.get("worker", ""))] = device
            bar, label = self._bar(device, int(_num(r.get("rank"))))
            bar.value = min(_num(r.get("global_step")) / total, 1.0)
            label.value = html.escape(
                f"{device}: {rate(r.get('samples_per_s'))} samples/s, "
                f"comm {_num(r.get('comm_share')):.0%}, "
                f"{int(_num(by_device.get(r.get('device'))))} samples"
            )
        stragglers = ", ".join(f"rank {int(_num(s))}" for s in rec.get("stragglers") or [])
        self.stats.value = html.escape(
            f"step {int(_num(rec.get('global_step')))}/{total} · epoch "
            f"{int(_num(rec.get('epoch')))} · loss {_num(rec.get('loss'), math.nan):.4g} · "
            f"{speed_eta(rec)} · communication "
            f"{_num(rec.get('comm_share')):.0%} · stragglers: {stragglers or 'none'}"
        )
        self.loss_plot.value = sparkline(self._losses)

    def _bar(self, device: str, rank: int) -> tuple[widgets.FloatProgress, widgets.HTML]:
        """The bar and label of one rank, by its device's name."""
        if device not in self._worker_bars:
            bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0,
                                        description=f"rank {rank}", bar_style="info")
            label = widgets.HTML("")
            self._worker_bars[device] = (bar, label)
            self.workers.children = (*self.workers.children, widgets.HBox([bar, label]))
        return self._worker_bars[device]

    def _state(self, rec: dict[str, Any]) -> None:
        self.state = str(rec.get("state", self.state))
        if self.state not in FINAL_STATES:
            message = str(rec.get("message") or "")[:500]
            self.final.value = html.escape(
                f"state: {self.state}" + (f" — {message}" if message else ""))
            first_step = bool(self.progress.get("ranks"))
            if rec.get("phase") not in (None, "training") and not first_step:
                # before the first step: what the job is doing, not an empty line
                self.stats.value = html.escape(message)
            # while the group re-forms its last speed and ETA mean nothing: say so instead
            recovering = self.state == "recovering"
            self.overall.bar_style = "warning" if recovering else ""
            if recovering:
                self.stats.value = html.escape(
                    f"step {int(_num(self.progress.get('global_step')))} · re-forming the "
                    "group: no speed or ETA until it trains again")
                lost = {*(rec.get("lost_devices") or []),
                        *(self._device_of.get(w) for w in rec.get("lost_workers") or [])}
                for device in lost:
                    if device in self._worker_bars:
                        self._worker_bars[device][0].bar_style = "danger"
            return
        self.error = str(rec.get("error") or "")[:2000]
        style = {"finished": "success", "failed": "danger", "cancelled": "warning"}[self.state]
        if self.state == "finished":
            self.overall.value = 1.0
        self.overall.bar_style = style
        for bar, _ in self._worker_bars.values():
            if self.state == "finished":
                bar.value = 1.0
            bar.bar_style = style
        self.cancel_button.disabled = True
        if self.state == "cancelled":  # the user's own choice, said as such: not an error
            self.error = ""
            text = str(rec.get("message") or "cancelled by the user")[:500]
        else:
            text = "done" if self.state == "finished" else self.state
            if self.error:
                text += f": {self.error}"
        self.final.value = f"<b>{html.escape(text)}</b>"
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def _on_cancel(self, _button: Any = None) -> None:
        if self.job.cancel():
            with self._lock:
                self.cancel_button.disabled = True
                if self.state not in FINAL_STATES:
                    self.final.value = html.escape("cancelling…")

    @property
    def worker_count(self) -> int:
        with self._lock:
            return len(self._worker_bars)

    def __repr__(self) -> str:
        with self._lock:
            p = self.progress
            step = f" step {p.get('global_step')}/{p.get('total_steps')}" if p else ""
            workers = f", {len(self._worker_bars)} worker(s)" if self._worker_bars else ""
            state = "done" if self.state == "finished" else self.state
            return f"TrainingDashboard(job {self.job.id}: {state}{step}{workers})"


# ---------------------------------------------------------------------------- subcommands


def _job_data(job: Any) -> dict[str, Any]:
    p = job.progress or {}
    return {"id": job.id, "state": job.state, "global_step": p.get("global_step"),
            "total_steps": p.get("total_steps"), "fraction": p.get("fraction")}


@subcommand("train", "train `model` on the cluster (cell: defines model, dataset, ...)",
            cell=True)
@argument("--epochs", type=int, default=1, help="passes over the dataset (default 1)")
@argument("--batch-size", type=int, default=64, help="global batch size (default 64)")
@argument("--strategy", default="auto", help="auto, ddp, ddp_fp16, local_sgd or fsdp")
@argument("--checkpoint-dir", metavar="D", help="write checkpoints here (and resume from them)")
def _train(ctx: Context, args: Any) -> Result:
    """Run the cell body in the notebook's namespace, then start training in the background and
    show a live dashboard. The cell (or an earlier one) must define `model`, `dataset`,
    `loss_fn` and `optimizer` -- objects or factories: `model`, `dataset`, `loss_fn` an object
    or a zero-argument factory, `optimizer` a factory taking the parameters (e.g.
    functools.partial(torch.optim.SGD, lr=0.1)) or an optimizer instance. An optional `client`
    (a Dask Client or scheduler address) picks the cluster; without it, the default Dask client
    or this device's parallalx cluster. The job is stored in VAR (-o, default `job`)."""
    from ..workloads.train import train

    var = args.output or "job"
    args.output = None  # the job object (not JSON) is stored below, under VAR
    shell = ctx.shell
    if ctx.cell and ctx.cell.strip():
        shell.ex(shell.transform_cell(ctx.cell))  # the user's errors show as usual
    missing = [n for n in REQUIRED if n not in shell.user_ns]
    if missing:
        raise magic_error(f"train: the cell must define {', '.join(missing)} "
                          f"(needs {', '.join(REQUIRED)}; see --help)")
    ns = shell.user_ns
    try:
        job = train(ns["model"], ns["dataset"], ns["loss_fn"], ns["optimizer"],
                    epochs=args.epochs, batch_size=args.batch_size, strategy=args.strategy,
                    checkpoint_dir=args.checkpoint_dir, client=ns.get("client"),
                    report=ctx.job_reporting())
    except (ValueError, TypeError) as err:
        raise magic_error(prefixed("train", err)) from None
    except Exception as err:  # TrainingError and friends: no cluster, bad objects
        raise magic_error(f"train: {type(err).__name__}: {err}") from None
    with _JOBS_LOCK:
        JOBS[job.id] = job
    ns[var] = job
    dashboard = TrainingDashboard(job)
    return Result(_job_data(job), lambda: dashboard)
