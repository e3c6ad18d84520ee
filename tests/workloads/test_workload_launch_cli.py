"""`parallalx launch script.py [args]` with a shipped working directory, on a real cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from parallalx_jupyter.workloads.launch_script import ScriptError, pack_directory, script_run

pytestmark = pytest.mark.timeout(300)

SCRIPT = '''
import json, os, sys
import torch.distributed as dist
import helper                        # a module of the shipped working directory
import parallalx_jupyter as px

dist.init_process_group("gloo")      # as under torchrun
out = sys.argv[1]
with open(os.path.join(out, f"rank{os.environ['RANK']}.json"), "w") as f:
    json.dump({"argv": sys.argv, "name": __name__, "helper": helper.VALUE,
               "data": open("data/values.txt").read().strip(),
               "world": dist.get_world_size(), "has_git": os.path.exists(".git")}, f)
px.report(step=1, loss=0.5)
print(f"loaded {helper.VALUE} on rank {os.environ['RANK']}")
print("a warning", file=sys.stderr)
'''


def _line(text: str, needle: str) -> str:
    return next((line for line in text.splitlines() if needle in line), "")


def _cli_env(cluster, home: Path) -> dict[str, str]:
    tls = cluster.tls
    return dict(cluster.env, PARALLALX_HOME=str(home),
                DASK_DISTRIBUTED__COMM__TLS__CA_FILE=tls["ca"],
                DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT=tls["client_cert"],
                DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY=tls["client_key"])


def _workdir(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"junk")
    (root / "helper.py").write_text("VALUE = 7\n")
    (root / "data" / "values.txt").write_text("1 2 3\n")
    (root / "train.py").write_text(SCRIPT)
    return root


def test_cli_launch_runs_the_script_on_every_rank_in_its_working_dir(cluster2, tmp_path) -> None:
    root = _workdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "launch", "--scheduler",
         cluster2.address, "--working-dir", str(root), str(root / "train.py"), str(out),
         "--tag", "x"],
        env=_cli_env(cluster2, tmp_path / "home"), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launch job" in proc.stderr and "state: finished" in proc.stdout
    # what the script printed, on the terminal that launched it, each line after its rank
    for rank in (0, 1):
        line = _line(proc.stdout, f"loaded 7 on rank {rank}")
        assert line.startswith(f"[rank {rank} ") and line.endswith(f"] loaded 7 on rank {rank}")
    assert _line(proc.stderr, "a warning").startswith("[rank ")
    seen = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for s in seen:
        assert s["argv"][1:] == [str(out), "--tag", "x"]
        assert s["argv"][0].endswith("/train.py")  # as `python train.py`: the script's path
        assert s["name"] == "__main__" and s["helper"] == 7 and s["data"] == "1 2 3"
        assert s["world"] == 2 and s["has_git"] is False  # .git is never shipped


def test_cli_launch_refuses_a_missing_script_in_one_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "launch", "--scheduler",
         "tls://127.0.0.1:1", str(tmp_path / "nope.py")],
        env=dict(os.environ, PARALLALX_HOME=str(tmp_path)), capture_output=True, text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == f"parallalx: error: launch: no such script: {tmp_path}/nope.py"


@pytest.mark.parametrize(("option", "says"), [
    (["--max-restarts", "-1"], "parameter 'max_restarts': -1 is less than the minimum of 0"),
    (["--group-timeout", "-5"], "parameter 'group_timeout': -5.0 is less than or equal to"),
    (["--scheduler", "tls://127.0.0.1:1"],
     "--scheduler tls://127.0.0.1:1: a tls:// scheduler needs credentials, and that is not "
     "this device's own scheduler: leave --scheduler out"),
])
def test_cli_launch_refuses_bad_options_of_an_existing_script_in_one_line(
        tmp_path, option, says) -> None:
    (tmp_path / "s.py").write_text("print('hi')\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PARALLALX_", "DASK_DISTRIBUTED__COMM__TLS"))}
    proc = subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "launch", *option, str(tmp_path / "s.py")],
        env=dict(env, PARALLALX_HOME=str(tmp_path)), capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("parallalx: error: ") and says in proc.stderr, proc.stderr


def test_cli_launch_refuses_a_bad_requirement_in_one_usage_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "launch", "-r", "!!bad",
         str(tmp_path / "s.py")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "parallalx launch: error: argument --requirement/-r: not a valid requirement '!!bad': "
        "Expected package name at the start of dependency specifier (e.g. torch>=2.1)")


def test_a_working_dir_over_the_cap_is_one_clear_line_before_reading_it(tmp_path) -> None:
    root = _workdir(tmp_path)
    with open(root / "data" / "big.bin", "wb") as f:  # sparse: nothing is written or read
        f.truncate(101 * 1024 * 1024)
    with pytest.raises(ScriptError, match=r"holds more than 100 MB to ship"):
        script_run(root / "train.py", [], root)
    with pytest.raises(ScriptError, match="not inside the working directory"):
        script_run(root / "train.py", [], root / "data")


def test_working_dirs_are_content_hashed_without_excluded_files(tmp_path) -> None:
    root = _workdir(tmp_path)
    archive, digest = pack_directory(root)
    (root / ".git" / "HEAD").write_text("changed\n")
    (root / "__pycache__" / "other.pyc").write_bytes(b"more junk")
    assert pack_directory(root) == (archive, digest)  # excluded files change nothing
    (root / "helper.py").write_text("VALUE = 8\n")
    assert pack_directory(root)[1] != digest


EXAMPLES = Path(__file__).resolve().parents[2] / "notebooks" / "scripts"


@pytest.mark.parametrize("script", ["ddp_digits.py", "accelerate_digits.py"])
def test_the_torchrun_example_scripts_run_unchanged(cluster2, tmp_path, script) -> None:
    """The examples written for torchrun (one calls init/destroy_process_group itself, the
    other lets Accelerate find the group; it imports the first from its working dir)."""
    proc = subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "launch", "--scheduler",
         cluster2.address, "--working-dir", str(EXAMPLES), str(EXAMPLES / script),
         "--epochs", "2"],
        env=_cli_env(cluster2, tmp_path / "home"), capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "state: finished" in proc.stdout
