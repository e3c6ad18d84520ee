"""`%parallalx kernels | ides | install | cluster`: environments and the cluster from a notebook.

They call the same REST routes as the CLI and the panel. `install` shows one progress bar per
package, fed by the `install-progress` events of the server's event stream while the install
request runs.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from .magics import Context, Result, argument, magic_error, subcommand

INSTALL_EVENT = "/install-progress/v1"
PHASES = {"collecting": 1, "downloading": 2, "installing": 3, "done": 4, "failed": 4}


def _table(rows: list[list[Any]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


class InstallProgress(widgets.VBox):
    """One bar per package; updated from the event thread under a lock (see widgets.py)."""

    def __init__(self) -> None:
        super().__init__()
        self._bars: dict[str, tuple[widgets.IntProgress, widgets.HTML]] = {}
        self._lock = threading.Lock()
        self.summary = widgets.HTML("")
        self.children = (self.summary,)

    def on_event(self, event: dict[str, Any]) -> None:
        if not str(event.get("schema_id", "")).endswith(INSTALL_EVENT):
            return
        package = str(event.get("package", ""))[:100]
        phase = str(event.get("phase", ""))
        with self._lock:
            if package not in self._bars:
                bar = widgets.IntProgress(value=0, min=0, max=4, description=package[:20])
                label = widgets.HTML("")
                self._bars[package] = (bar, label)
                self.children = (*self.children, widgets.HBox([bar, label]))
            bar, label = self._bars[package]
            bar.value = PHASES.get(phase, bar.value)
            bar.bar_style = {"done": "success", "failed": "danger"}.get(phase, "info")
            message = str(event.get("message", ""))[:200]
            label.value = html.escape(f"{phase} {message}".strip())

    def finish(self, text: str) -> None:
        with self._lock:
            self.summary.value = html.escape(text)


@subcommand("kernels", "kernels (environments) a worker can run in")
@argument("--refresh", action="store_true", help="look again (re-run every interpreter)")
def _kernels(ctx: Context, args: Any) -> Result:
    """List this device's kernelspecs with interpreter and Python version; non-Python kernels
    are listed as not selectable, with the reason."""
    data = ctx.connection.call("GET", "kernels" + ("?refresh=true" if args.refresh else ""))
    return Result(data, lambda: _table(
        [[k["name"], k["language"], k.get("python_version") or "-",
          "yes" if k["selectable"] else f"no: {k.get('reason')}"] for k in data],
        ["KERNEL", "LANGUAGE", "PYTHON", "SELECTABLE"]))


@subcommand("ides", "IDEs on this device and the Python each is configured to use")
def _ides(ctx: Context, args: Any) -> Result:
    """List IDEs found on this device, their version and configured interpreter."""
    data = ctx.connection.call("GET", "ides")
    return Result(data, lambda: _table(
        [[i["id"], i["name"], i.get("version") or "-", i.get("interpreter") or "-"]
         for i in data if i["found"]], ["ID", "IDE", "VERSION", "PYTHON"]))


@subcommand("install", "check or install what a kernel needs for the cluster")
@argument("requirements", nargs="*", help="extra requirements of the job (PEP 508)")
@argument("--kernel", help="kernelspec to check (default: the server's Python)")
@argument("--ide", help="use the interpreter this IDE is configured with")
@argument("--check", action="store_true", help="only show what would be installed")
def _install(ctx: Context, args: Any) -> Result:
    """Compare the selected environment with this device's versions of the cluster-critical
    packages plus the given requirements, and install what is missing with that environment's
    pip, one progress bar per package."""
    body: dict[str, Any] = {"requirements": list(args.requirements)}
    if args.kernel:
        body["kernel"] = args.kernel
    if args.ide:
        body["ide"] = args.ide
    if args.check:
        data = ctx.connection.call("POST", "environment/check", body)
        return Result(data, lambda: _diff_text(data))
    progress = InstallProgress()
    unsubscribe = ctx.connection.events.subscribe(progress.on_event)
    display(progress)
    try:
        data = ctx.connection.call("POST", "environment/install", body)
    finally:
        unsubscribe()
    progress.finish(f"{data['python']}: everything needed is installed")
    return Result(data, lambda: _diff_text(data))


def _diff_text(data: dict[str, Any]) -> str:
    rows = [[e["name"], e["required"] or "any", e["installed"] or "-", e["action"]]
            for e in data["diff"]]
    return f"python: {data['python']}\n" + _table(rows, ["PACKAGE", "REQUIRED", "INSTALLED",
                                                         "ACTION"])


@subcommand("cluster", "this device's cluster: show, start, stop, add-self")
@argument("action", nargs="?", default="show", help="show | start | stop | add-self")
@argument("--kernel", help="add-self: kernelspec the local worker runs in")
@argument("--nthreads", type=int, default=1, help="add-self: worker threads")
def _cluster(ctx: Context, args: Any) -> Result:
    """The scheduler this device runs as a main device, workers per device, the dashboard link,
    and the main devices this device serves."""
    if args.action not in ("show", "start", "stop", "add-self"):
        raise magic_error("cluster: action must be show, start, stop or add-self")
    if args.action == "show":
        data = ctx.connection.call("GET", "cluster")
    elif args.action == "add-self":
        body: dict[str, Any] = {"nthreads": args.nthreads}
        if args.kernel:
            body["kernel"] = args.kernel
        data = ctx.connection.call("POST", "cluster/add-self", body)
    else:
        data = ctx.connection.call("POST", f"cluster/{args.action}")
    return Result(data, lambda: _cluster_text(data))


def _cluster_text(state: dict[str, Any]) -> str:
    lines = [f"scheduler: {state['scheduler_address'] or '(not running)'}",
             f"dashboard: {state['dashboard_link'] or '-'}"]
    rows = [[w["device_id"][:15] + "…", w["address"], w["nthreads"]] for w in state["workers"]]
    lines.append(_table(rows, ["DEVICE", "WORKER", "THREADS"]))
    lines += [f"serving {s['main_id'][:15]}…: {s['state']}" for s in state["serving"]]
    return "\n".join(lines)
