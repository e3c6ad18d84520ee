"""The project's main job, end to end: pair three local devices and train across them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from parallalx_jupyter.demo import run_demo

pytestmark = pytest.mark.timeout(240)


@pytest.mark.e2e  # starts three device processes and their cluster
def test_demo_pairs_devices_and_trains_digits_on_the_devices_auto_chose() -> None:
    said: list[str] = []
    report = run_demo(devices=3, as_json=True, echo=said.append)
    training = report["training"]
    # it says how training goes while it trains, not only once it is over (issue #17, 13)
    progress = [line for line in said if line.startswith("  training (")]
    assert progress and said.index(progress[0]) < next(
        i for i, line in enumerate(said) if line.startswith("test accuracy")), said
    assert any(re.search(r": \d+/\d+", line) for line in progress), progress
    # devices by name, never by their workers' addresses
    assert not [line for line in said if "tls://" in line], said
    print(f"\ndemo: {training['contribution']} accuracy {training['accuracy']} "
          f"training {training['training_seconds']} s, total {report['seconds']} s")
    assert training["accuracy"] >= 0.95
    workers = {p["worker"] for p in report["pairings"]}
    assert workers == {"lab-desktop", "gaming-pc"}
    contributed = {c["device"] for c in training["contribution"] if c["samples"] > 0}
    preflight = training["preflight"]
    # auto measured every device and trained on those predicted to finish soonest
    assert preflight["placement"].startswith("training on")
    # ... by the devices' names (asked of the server the job reports to), not their IDs
    names = {"laptop", "lab-desktop", "gaming-pc"}
    chosen = preflight["placement"].removeprefix("training on ").split(":")[0]
    assert set(chosen.removesuffix(" alone").split(", ")) <= names, preflight["placement"]
    assert len(contributed) == preflight["world_size"] >= 1
    if preflight["idle"]:
        assert preflight["world_size"] == 1 and "alone" in preflight["placement"]
    assert abs(sum(c["share"] for c in training["contribution"]) - 1.0) < 1e-3
    assert training["job"]["state"] == "finished" and training["job"]["workload"] == "train"


@pytest.mark.parametrize(("value", "says"), [("0", "the demo needs 2 to 8 devices, got 0"),
                                             ("9", "the demo needs 2 to 8 devices, got 9"),
                                             ("three", "not a whole number: 'three'")])
def test_a_bad_device_count_is_one_usage_line(value: str, says: str) -> None:
    command = [sys.executable, "-m", "parallalx_jupyter.cli", "demo", "--devices", value]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"parallalx demo: error: argument --devices: {says}"
    assert "Traceback" not in out.stderr and out.stdout == ""


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_file_as_the_workdir_is_one_usage_line(tmp_path, below: str) -> None:
    """A file where the demo would make its devices' state dirs (or on the way there)."""
    (tmp_path / "file").write_text("")
    workdir = tmp_path / "file" / below if below else tmp_path / "file"
    command = [sys.executable, "-m", "parallalx_jupyter.cli", "demo", "--workdir", str(workdir),
               "--devices", "2"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"parallalx demo: error: argument --workdir: {tmp_path}/file is a file, not a "
        "directory: give a directory (it may not exist yet) or leave --workdir out")
