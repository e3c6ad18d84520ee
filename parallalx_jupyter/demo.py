"""`parallalx demo`: several real devices on this machine, paired through the real protocol.

Each device is its own Jupyter server process with its own state directory and ports on
127.0.0.1. The first device invites the others; each invited device's "user" is played by this
script calling that device's own REST API to accept, after checking that both screens show the
same verification code, which is exactly what a person would do. Nothing is simulated except
that the devices share a host.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from .local_device import LocalDevice, wait_for

NAMES = ["laptop", "lab-desktop", "gaming-pc", "workstation", "tower", "mini-pc", "nuc", "server"]


def _say(as_json: bool, text: str) -> None:
    if not as_json:
        print(text, flush=True)


def run_demo(devices: int = 3, workdir: str | None = None, as_json: bool = False) -> Any:
    if devices < 2 or devices > len(NAMES):
        raise ValueError(f"--devices must be between 2 and {len(NAMES)}")
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="parallalx-demo-"))
    started: list[LocalDevice] = []
    report: dict[str, Any] = {"devices": [], "pairings": []}
    t0 = time.perf_counter()
    try:
        for i in range(devices):
            dev = LocalDevice(home=root / NAMES[i], name=NAMES[i])
            _say(as_json, f"starting device {NAMES[i]} ...")
            started.append(dev.start())
        main, others = started[0], started[1:]
        for dev in started:
            info = dev.api("GET", "device")
            report["devices"].append({"name": info["name"], "id": info["id_display"],
                                      "peer_url": dev.peer_url})
            _say(as_json, f"  {info['name']:<12} {info['id_display']}  peer {dev.peer_url}")
        for dev in others:
            sent = main.api("POST", "invitations", {
                "url": dev.peer_url, "asks": {"purpose": "demo: train a digits classifier"},
            })
            incoming = wait_for(lambda d=dev, rid=sent["id"]: next(
                (r for r in d.api("GET", "requests") if r["id"] == rid), None))
            same = incoming["code"] == sent["code"]
            _say(as_json, f"{main.name} -> {dev.name}: code {sent['code']} on {main.name}, "
                          f"{incoming['code']} on {dev.name} ({'match' if same else 'MISMATCH'})")
            if not same:
                dev.api("POST", f"requests/{incoming['id']}/reject", {})
                raise RuntimeError("verification codes differ: refusing to pair")
            dev.api("POST", f"requests/{incoming['id']}/accept", {})
            wait_for(lambda rid=sent["id"]:
                     main.api("GET", f"requests/{rid}")["state"] == "accepted")
            report["pairings"].append({"main": main.name, "worker": dev.name, "code": sent["code"]})
        for dev in started:
            view = dev.api("GET", "devices")
            entry = next(d for d in report["devices"] if d["name"] == dev.name)
            entry["sees"] = [{"name": v["name"], "role": v["role"], "state": v["state"]}
                             for v in view]
            _say(as_json, f"{dev.name} sees: " + ", ".join(
                f"{v['name']} ({v['role']}, {v['state']})" for v in view))
        report["seconds"] = round(time.perf_counter() - t0, 2)
        _say(as_json, f"paired {len(others)} devices with {main.name} in {report['seconds']} s")
    finally:
        for dev in started:
            dev.stop()
        if not workdir:
            shutil.rmtree(root, ignore_errors=True)
    return report if as_json else None


if __name__ == "__main__":
    print(json.dumps(run_demo(as_json=True), indent=2))
