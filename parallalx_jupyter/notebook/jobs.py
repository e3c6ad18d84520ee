"""`%parallalx workloads`, `%parallalx run` and `%parallalx jobs`: any workload, one job list.

    %parallalx workloads                       # what is installed (entry points)
    %parallalx run sweep objective=my_objective space=$space sampler=grid -o sweep_job
    %parallalx jobs                            # every job of this device (all kernels, CLI)
    %parallalx jobs cancel 3f9a0c1b2d4e

`run` parameters are `key=value` words: JSON values (`epochs=3`, `space='{"lr": {...}}'`), or
for Python-object parameters the name of a variable in the notebook (`objective=my_objective`)
or a `package.module:attribute` reference. The job runs in this kernel, shows a live view and
is stored in VAR (`-o`, default `job`); the panel and the CLI see it and can cancel it.

`workloads`, `run` and `jobs` are table commands (`parallalx_jupyter.commands`, shared with the
CLI); `run` is implemented here, since the job runs in this kernel.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets
from IPython.core.error import UsageError

from ..jobs.reporter import summarize
from ..text import progress_text
from .magics import Context, Result, handles, magic_error, prefixed
from .training import _JOBS_LOCK, FINAL_STATES, JOBS, TrainingDashboard, sparkline

OUTPUT_SHOWN = 200


class JobView(widgets.VBox):
    """Live view of any workload's job: progress bar, message, loss/best-value plot, Cancel."""

    def __init__(self, job: Any) -> None:
        super().__init__()
        self.job = job
        self._lock = threading.Lock()
        self._values: list[float] = []
        self.title = widgets.HTML(html.escape(f"{job.workload} job {job.id}: {job.name}"))
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0)
        self.text = widgets.HTML("")
        self.plot = widgets.HTML(sparkline([]))
        self.cancel_button = widgets.Button(description="Cancel", button_style="warning")
        self.cancel_button.on_click(lambda _b: self._cancel())
        self.final = widgets.HTML("")
        #: what the job's ranks print (launch), the last OUTPUT_SHOWN lines; hidden until then
        self.output = widgets.HTML("", layout=widgets.Layout(display="none"))
        self.state = str(job.state)
        self.children = (self.title, self.bar, self.text, self.plot, self.output,
                         self.cancel_button, self.final)
        self._unsubscribe = job.subscribe(self.on_record)
        if job.progress:
            self.on_record(dict(job.progress))
        for rec in [e for e in list(job.events) if e.get("kind") == "state"][-1:]:
            self.on_record(rec)

    def on_record(self, rec: dict[str, Any]) -> None:
        with self._lock:
            if rec.get("kind") == "output":
                lines = self.job.output_text().splitlines()[-OUTPUT_SHOWN:]
                self.output.value = (
                    '<pre style="max-height:16em;overflow:auto;margin:4px 0;font-size:12px">'
                    + html.escape("\n".join(lines)) + "</pre>")
                self.output.layout.display = None
            elif rec.get("kind") == "progress":
                p = summarize(rec)
                if p["fraction"] is not None:
                    self.bar.value = p["fraction"]
                if p["loss"] is not None:
                    self._values.append(p["loss"])
                    self.plot.value = sparkline(self._values)
                self.text.value = html.escape(progress_text(p))
            elif rec.get("kind") == "state":
                self.state = str(rec.get("state"))
                if self.state not in FINAL_STATES:  # e.g. recovering: which device, and why
                    message = str(rec.get("message") or "")[:500]
                    self.final.value = html.escape(f"{self.state}: {message}" if message else "")
                if self.state in FINAL_STATES:
                    style = {"finished": "success", "failed": "danger",
                             "cancelled": "warning"}[self.state]
                    self.bar.bar_style = style
                    if self.state == "finished":
                        self.bar.value = 1.0
                    self.cancel_button.disabled = True
                    if self.state == "cancelled":  # the user's own choice, not an error
                        said = str(rec.get("message") or "cancelled by the user")[:500]
                        self.final.value = f"<b>{html.escape(said)}</b>"
                        return
                    error = str(rec.get("error") or "")[:2000]
                    self.final.value = f"<b>{html.escape(self.state)}" + \
                        (f": {html.escape(error)}" if error else "") + "</b>"

    def _cancel(self) -> None:
        if self.job.cancel():
            self.cancel_button.disabled = True
            self.final.value = "cancelling…"

    def __repr__(self) -> str:
        return f"JobView({self.job.workload} job {self.job.id}: {self.state})"


def _param_value(ns: dict[str, Any], schema: dict[str, Any], key: str, value: Any) -> Any:
    """For Python-object parameters, a bare name is a notebook variable."""
    prop = (schema.get("properties") or {}).get(key) or {}
    if prop.get("x-python") and isinstance(value, str) and value.isidentifier():
        if value not in ns:
            raise magic_error(f"run: parameter '{key}': no variable {value!r} in this notebook "
                              "(or give package.module:attribute)")
        return ns[value]
    return value


@handles("launch")
def _launch(ctx: Context, args: Any) -> Result:
    """`%parallalx launch SCRIPT [ARGS]` or `%%parallalx launch [options] [-- ARGS]` with the
    cell as the script: the same job as `px.launch` (see the command's help)."""
    import tempfile
    from pathlib import Path

    from ..workloads import WorkloadError
    from ..workloads.launch import LaunchWorkload
    from ..workloads.launch_script import ScriptError, launch_params, script_run

    var = args.output or "job"
    args.output = None
    argv = list(args.script_args or [])
    if ctx.cell is not None and ctx.cell.strip():
        if args.script is not None:  # with a cell every word after the options is an argument
            argv = [args.script, *argv]
        if args.working_dir:
            raise magic_error("launch: --working-dir ships a directory with a script file in "
                              "it: save the cell there and run `%parallalx launch "
                              "--working-dir DIR DIR/script.py`")
        script = Path(tempfile.mkdtemp(prefix="parallalx-cell-")) / "cell.py"
        script.write_text(ctx.cell)
    elif args.script is None:
        raise magic_error("launch: give a script, or use %%parallalx launch with the script "
                          "as the cell")
    else:
        script = Path(args.script)
    workload = LaunchWorkload()
    try:
        params = workload.validate(launch_params(script_run(script, argv, args.working_dir),
                                                 args))
    except (ScriptError, WorkloadError) as err:
        raise magic_error(prefixed("launch", err)) from None
    return _started(ctx, args, var, "launch", lambda: (workload, params))


def _started(ctx: Context, args: Any, var: str, what: str, prepare: Any) -> Result:
    """Start the job `prepare()` says (workload, params) on the notebook's cluster, keep it in
    `var` and the kernel's job list, and show it live: `%parallalx run` and `launch`."""
    from ..workloads import WorkloadError
    from ..workloads.runner import start

    ns = ctx.shell.user_ns
    try:
        workload, params = prepare()
        job = start(workload, params, client=args.scheduler or ns.get("client"),
                    name=args.name, report=ctx.job_reporting())
    except UsageError:  # already one line of ours (a notebook variable that is missing)
        raise
    except WorkloadError as err:
        raise magic_error(prefixed(what, err)) from None
    except Exception as err:  # no cluster, unreachable scheduler
        raise magic_error(f"{what}: {type(err).__name__}: {err}") from None
    with _JOBS_LOCK:
        JOBS[job.id] = job
    ns[var] = job
    view = TrainingDashboard(job) if job.workload == "train" else JobView(job)
    return Result({"id": job.id, "workload": job.workload, "state": job.state}, lambda: view)


@handles("run")
def _run(ctx: Context, args: Any) -> Result:
    """Start the workload in the background with a live view (see the command's help)."""
    from ..workloads.params import parse_params
    from ..workloads.registry import get

    var = args.output or "job"
    args.output = None
    ns = ctx.shell.user_ns

    def prepare() -> tuple[Any, dict[str, Any]]:
        workload = get(args.workload)
        raw = parse_params(args.params, args.params_json)
        return workload, {k: _param_value(ns, workload.parameters, k, v) for k, v in raw.items()}

    return _started(ctx, args, var, "run", prepare)
