"""Shared by the UI tests and their fixtures (imported as a top-level module, as pytest puts
this directory on sys.path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from parallalx_jupyter.local_device import LocalDevice

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
REPO = Path(__file__).resolve().parents[2]
BUILT_EXTENSION = REPO / "parallalx_jupyter" / "labextension"
ARTIFACTS = REPO / "test-artifacts" / "ui"
HOSTILE_NAME = "<img src=x onerror=alert(1)>"


class LabPage:
    """One JupyterLab page per lab server (loading Lab costs seconds), shared by that server's
    tests; `start_test` puts it back in a known state and points screenshots at the test."""

    def __init__(self, page: Any, lab: LocalDevice) -> None:
        self.page = page
        self.lab = lab
        self.shots = ARTIFACTS
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda err: self.errors.append(str(err)))
        page.on("console", self._on_console)

    def _on_dialog(self, dialog: Any) -> None:  # alert()/confirm() would mean injected script
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _on_console(self, message: Any) -> None:  # our extension logging an error
        if message.type == "error" and "parallalx" in message.text.lower():
            self.errors.append(message.text)

    def open(self) -> LabPage:
        self.page.goto(f"{self.lab.url}/lab?token={self.lab.token}")
        self.page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=90_000)
        self.show_panel()
        return self

    def show_panel(self) -> None:
        tab = self.page.locator('.jp-SideBar .lm-TabBar-tab[data-id="parallalx-jupyter-panel"]')
        tab.wait_for(timeout=30_000)
        if not self.panel.is_visible():
            tab.click()
        self.panel.wait_for(state="visible")

    def start_test(self, shots: Path) -> None:
        self.shots = shots
        page = self.page
        for _ in range(3):  # a dialog left open by a failed test
            if page.locator(".jp-Dialog").count() == 0:
                break
            page.keyboard.press("Escape")
            page.wait_for_timeout(200)
        if page.locator(".jp-Dialog").count() > 0:
            self.open()
        # close leftover toasts (best effort: queued ones appear as others close)
        deadline = time.monotonic() + 5
        close = page.locator(".Toastify__toast:not(.Toastify--animate) .Toastify__close-button")
        while close.count() > 0 and time.monotonic() < deadline:
            try:
                close.first.click(timeout=1000)
            except Exception:  # noqa: BLE001 - it may be closing already
                pass
            page.wait_for_timeout(100)
        self.show_panel()

    @property
    def panel(self) -> Any:
        return self.page.locator("#parallalx-jupyter-panel")

    def section(self, name: str) -> Any:
        return self.page.locator(f"#parallalx-section-{name}")

    def toast(self, code: str) -> Any:
        """The toast that shows this verification code."""
        return self.page.locator(".Toastify__toast").filter(has_text=f"{code[:3]} {code[3:]}")

    def run_command(self, label: str) -> None:
        """Run a command from the command palette (Ctrl+Shift+C)."""
        page = self.page
        page.locator("#jp-main-dock-panel").click(position={"x": 600, "y": 20})
        page.keyboard.press("Control+Shift+C")
        palette = page.locator(".lm-CommandPalette-input")
        palette.wait_for()
        palette.fill(label)
        page.locator(".lm-CommandPalette-item").filter(has_text=label).first.click()

    def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        self.page.wait_for_timeout(300)  # let toasts finish sliding in
        self.page.screenshot(path=str(self.shots / f"{name}.png"))
