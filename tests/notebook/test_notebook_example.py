"""notebooks/connect_devices.ipynb runs clean with nbclient against two real devices: its kernel
talks to alpha (PARALLALX_URL/TOKEN) and invites bravo (PARALLALX_PEER_URL), whose "user" (a
thread here) accepts the request once it arrives, as a person would in the sidebar."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from parallalx_jupyter.local_device import wait_for

NOTEBOOK = Path(__file__).parents[2] / "notebooks" / "connect_devices.ipynb"


def _texts(nb: nbformat.NotebookNode) -> list[tuple[int, str, str]]:
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.output_type == "stream":
                out.append((i, o.name, o.text))
            elif o.output_type in ("display_data", "execute_result"):
                out.append((i, "data", o.data.get("text/plain", "")))
            elif o.output_type == "error":
                out.append((i, "error", f"{o.ename}: {o.evalue}"))
    return out


def test_connect_devices_notebook_runs_clean(make_device, tmp_path):
    alpha, bravo = make_device("alpha"), make_device("bravo")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    env.update(PARALLALX_URL=alpha.url, PARALLALX_TOKEN=alpha.token,
               PARALLALX_PEER_URL=bravo.peer_url, PARALLALX_WAIT="60")
    accepted: list[dict] = []

    def bravos_user() -> None:
        pending = wait_for(lambda: bravo.api("GET", "requests?direction=incoming"), 90, 0.1)
        accepted.append(bravo.api("POST", f"requests/{pending[0]['id']}/accept", {}))

    user = threading.Thread(target=bravos_user, daemon=True)
    user.start()
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute(env=env)
    user.join(10)

    texts = _texts(nb)
    problems = [t for t in texts if t[1] in ("error", "stderr")]
    assert not problems, problems
    joined = "\n".join(t[2] for t in texts)
    assert "this device: alpha" in joined and "found by: PARALLALX_URL" in joined
    assert accepted and accepted[0]["peer"]["name"] == "alpha"
    assert f"request {accepted[0]['id']} to bravo: accepted" in joined
    assert "1 device(s) known to this one" in joined
    devices = alpha.api("GET", "devices")
    assert [(d["name"], d["state"]) for d in devices] == [("bravo", "paired")]
