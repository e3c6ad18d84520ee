"""The CLI's and the magics' text for `GET cluster`: devices by name, this device marked."""

from __future__ import annotations

from parallalx_jupyter.text import cluster_text

SELF_ID, PEER_ID = "S" * 52, "P" * 52


def _state(own: dict | None) -> dict:
    return {
        "running": True, "scheduler_address": "tls://10.0.0.2:8786", "dashboard_link": None,
        "ca_fingerprint": "ab" * 32, "serving": [], "own_worker": own,
        "workers": [
            {"device_id": SELF_ID, "device_name": "main-desktop", "this_device": True,
             "address": "tls://10.0.0.2:4001", "nthreads": 1},
            {"device_id": PEER_ID, "device_name": "alice-laptop", "this_device": False,
             "address": "tls://10.0.0.7:4002", "nthreads": 4},
        ],
    }


def test_workers_are_named_by_device_and_this_device_is_marked() -> None:
    shown = cluster_text(_state({"main_id": SELF_ID, "state": "running", "message": None}))
    rows = {line.split()[0]: line for line in shown.splitlines() if "tls://10.0.0." in line}
    assert "(this device)" in rows["main-desktop"] and "SSSSSSSSSSSSSSS…" in rows["main-desktop"]
    assert "(this device)" not in rows["alice-laptop"]
    assert "this device's worker" not in shown  # it is in the table


def test_an_own_worker_that_is_not_in_says_why() -> None:
    state = _state({"main_id": SELF_ID, "state": "waiting-for-scheduler",
                    "message": "worker did not join"})
    state["workers"] = state["workers"][1:]
    shown = cluster_text(state)
    assert "this device's worker: waiting-for-scheduler (worker did not join)" in shown
