"""`%parallalx install`: one progress bar per package while a kernel gets what it needs.

`kernels`, `ides`, `install` and `cluster` are table commands (`parallalx_jupyter.commands`: the
REST routes and the text the CLI uses too). `install` adds the progress bars here, fed by the
`install-progress` events of the server's event stream while the install request runs.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from ..commands import COMMANDS
from .magics import Context, Result, handles

INSTALL_EVENT = "/install-progress/v1"
PHASES = {"collecting": 1, "downloading": 2, "installing": 3, "done": 4, "failed": 4}


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


@handles("install")
def _install(ctx: Context, args: Any) -> Result:
    command = COMMANDS["install"]
    inv = ctx.invocation("install", args)
    if args.check:
        data = command.call(inv)  # type: ignore[misc]
        return Result(data, lambda: command.show(inv, data))
    progress = InstallProgress()
    unsubscribe = ctx.connection.events.subscribe(progress.on_event)
    display(progress)
    try:
        data = command.call(inv)  # type: ignore[misc]
    finally:
        unsubscribe()
    progress.finish(f"{data['python']}: everything needed is installed")
    return Result(data, lambda: command.show(inv, data))
