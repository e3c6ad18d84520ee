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
    rows = {line.split()[0]: line for line in shown.splitlines()
            if line.startswith(("main-desktop", "alice-laptop"))}
    assert "(this device)" in rows["main-desktop"] and "SSSSSSSSSSSSSSS…" in rows["main-desktop"]
    assert "(this device)" not in rows["alice-laptop"]
    assert "this device's worker" not in shown  # it is in the table
    # devices by name, never by a worker's own address (issue #17, item 8)
    assert "tls://10.0.0.7" not in shown and "tls://10.0.0.2:4001" not in shown


def test_the_ids_are_the_ones_devices_shows_and_serving_names_the_main_device() -> None:
    state = _state(None)
    state["workers"].append({**state["workers"][1], "address": "tls://10.0.0.7:4003"})
    state["workers"][1]["device_id_display"] = "PPPPPPP-PPPPPPP-PPPPPPP"
    state["serving"] = [{"main_id": PEER_ID, "main_name": "alice-laptop",
                         "main_id_display": "PPPPPPP-PPPPPPP-PPPPPPP", "state": "running"}]
    shown = cluster_text(state)
    [row] = [line for line in shown.splitlines() if line.startswith("alice-laptop")]
    assert row.split()[1:] == ["PPPPPPP-PPPPPPP…", "2", "8"]  # two workers, 4 threads each
    assert "serving main device alice-laptop [PPPPPPP-PPPPPPP…]: running" in shown
    assert "PPPPPPPPPPPPPPP" not in shown


def test_an_own_worker_that_is_not_in_says_why() -> None:
    state = _state({"main_id": SELF_ID, "state": "waiting-for-scheduler",
                    "message": "worker did not join"})
    state["workers"] = state["workers"][1:]
    shown = cluster_text(state)
    assert "this device's worker: waiting-for-scheduler (worker did not join)" in shown


# ---------------------------------------------------------------------------- jobs: speed, ETA
#: the same cases as labextension/test/models.test.ts ("job speed and ETA"): the panel writes
#: the job's numbers exactly as the CLI and the notebook do
SPEED_CASES = [(0.523, "0.52 samples/s"), (12.5, "13 samples/s"), (845.2, "845 samples/s"),
               (1234.5, "1,235 samples/s"), (1_234_567.0, "1,234,567 samples/s"),
               (None, "- samples/s")]
ETA_CASES = [(42.9, "42s"), (65.0, "1m 05s"), (7380.0, "2h 03m"), (None, "-"), (-1.0, "-")]


def test_speed_and_eta_are_written_one_way() -> None:
    from parallalx_jupyter.text import eta, progress_text, speed_eta

    for value, shown in SPEED_CASES:
        assert speed_eta({"samples_per_s": value}).split(" · ")[0] == shown
    for value, shown in ETA_CASES:
        assert eta(value) == shown
    p = {"step": 30, "total": 100, "loss": 0.5, "samples_per_s": 1234.5, "eta_s": 65.0}
    assert progress_text(p) == "30/100 · loss 0.5 · 1,235 samples/s · ETA 1m 05s"


def _job(state: str, **progress: object) -> dict:
    return {"id": "j1", "workload": "train", "name": "train Net on 1,797 samples",
            "state": state, "owner": {"kind": "kernel", "pid": 7},
            "progress": {"step": None, "total": None, "loss": None, "samples_per_s": None,
                         "eta_s": None, **progress}}


def test_the_job_line_says_the_phase_and_a_users_cancel_in_words() -> None:
    from parallalx_jupyter.text import jobs_table

    line = jobs_table([_job("running", message="preflight: timing devices…")]).splitlines()[1]
    assert "preflight: timing devices…" in line
    line = jobs_table([_job("cancelled", step=40, total=100,
                            message="cancelled by the user at step 40")]).splitlines()[1]
    assert "cancelled by the user at step 40" in line and "error" not in line
    assert "cancelled by the user" in jobs_table([_job("cancelled")])


def test_printable_keeps_lines_and_indentation_and_drops_terminal_sequences() -> None:
    from parallalx_jupyter.text import printable

    raw = ("\x1b[1;31mError\x1b[0m:\n    indented\tcell\r\n\x1b]0;new title\x07done"
           "\u202e\x00\r50%\r100%")
    assert printable(raw) == "Error:\n    indented\tcell\ndone\n50%\n100%"
