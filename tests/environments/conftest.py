"""Fixtures for the environment step: real virtual environments, kernelspecs and wheels on disk."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from env_helpers import TOY, venv_python


@pytest.fixture
def jupyter_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private JUPYTER_DATA_DIR (and JUPYTER_PATH); returns its ``kernels`` folder."""
    data = tmp_path / "jupyter-data"
    (data / "kernels").mkdir(parents=True)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter-path"))
    return data / "kernels"


@pytest.fixture
def make_venv(tmp_path: Path) -> Callable[..., Path]:
    """Create a real virtual environment; returns its interpreter.

    ``--without-pip --system-site-packages`` keeps it fast: ``python -m pip`` then runs the base
    interpreter's pip, which installs into the venv (the venv is the running prefix).
    """

    def make(name: str = "venv", *, system_site: bool = True) -> Path:
        target = tmp_path / name
        cmd = [sys.executable, "-m", "venv", "--without-pip"]
        if system_site:
            cmd.append("--system-site-packages")
        subprocess.run([*cmd, str(target)], check=True, timeout=60)
        return venv_python(target)

    return make


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """px-toy 1.0 and 2.0 built offline with the installed setuptools into a local wheelhouse."""
    base = tmp_path_factory.mktemp("toy")
    sources = []
    for version in ("1.0", "2.0"):
        src = base / f"src-{version}"
        src.mkdir()
        (src / "pyproject.toml").write_text(textwrap.dedent(f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{TOY}"
            version = "{version}"

            [tool.setuptools]
            py-modules = ["px_toy"]
            """), encoding="utf-8")
        (src / "px_toy.py").write_text(f"VERSION = {version!r}\n", encoding="utf-8")
        sources.append(str(src))
    house = base / "wheelhouse"
    # one pip per version (pip refuses two versions of one project in a single resolve); the
    # two builds run side by side
    builds = [
        subprocess.Popen([sys.executable, "-m", "pip", "wheel", "--no-build-isolation",
                          "--no-deps", "--no-index", "-q", "-w", str(house), src], cwd=base)
        for src in sources
    ]
    assert [b.wait(timeout=120) for b in builds] == [0, 0]
    assert sorted(p.name for p in house.glob("*.whl")) == [
        "px_toy-1.0-py3-none-any.whl", "px_toy-2.0-py3-none-any.whl"]
    return house
