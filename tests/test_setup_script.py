"""scripts/setup.sh, README's first step (issue #17, item 13): where it installs, decided
without installing anything (`--dry-run`). CI runs it as root in a plain Python: that
environment itself; a user outside a virtual environment gets .venv; an active virtual
environment is used as it is; and it runs where only `python3` exists."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SETUP = Path(__file__).parents[1] / "scripts" / "setup.sh"


def _setup(env: dict[str, str], user: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(user or []), "bash", str(SETUP), "--dry-run"], env=env,
                          capture_output=True, text=True, timeout=60)


def _only_python3_path(tmp_path: Path, python: str = sys.executable) -> str:
    """A PATH with `python3` and the few tools the script needs, and no `python`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    for tool in ("bash", "dirname", "id"):
        found = shutil.which(tool)
        assert found, tool
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHON", "VIRTUAL_ENV", "PYTHONHOME")}


def test_a_python_that_is_not_a_venv_is_used_by_root_and_only_python3_is_enough(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the root case (CI) needs root")
    if sys.prefix != sys.base_prefix:
        pytest.skip("this test runs in a virtual environment")
    env = {**_base_env(), "PATH": _only_python3_path(tmp_path)}
    out = _setup(env)
    assert out.returncode == 0, out.stderr
    assert f"installing into {sys.prefix}" in out.stdout


def test_an_active_virtual_environment_is_used(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")],
                   check=True, timeout=120)
    python = tmp_path / "env" / "bin" / "python"
    out = _setup({**_base_env(), "PYTHON": str(python)})
    assert out.returncode == 0, out.stderr
    assert f"installing into {tmp_path / 'env'}" in out.stdout


def test_a_user_outside_a_virtual_environment_gets_one(tmp_path):
    setpriv, system = shutil.which("setpriv"), Path("/usr/bin/python3")
    if os.geteuid() != 0 or setpriv is None or not system.exists():
        pytest.skip("needs root, setpriv and /usr/bin/python3 to run it as another user")
    with tempfile.TemporaryDirectory() as shared:  # pytest's tmp_path is root's alone
        Path(shared).chmod(0o755)
        env = {**_base_env(), "PATH": _only_python3_path(Path(shared), str(system)),
               "HOME": shared}
        out = _setup(env, [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert out.returncode == 0, out.stderr
    assert "would install into the virtual environment .venv" in out.stdout


def test_readmes_first_command_makes_a_venv_with_python3_and_runs_the_setup():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].split("```", 1)[0].strip()
    assert first.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert first.endswith("bash scripts/setup.sh && parallalx demo")
    assert "python3-venv" in readme.split("```bash\n", 2)[1]  # said right after it
