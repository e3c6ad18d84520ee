"""Helpers shared by the environment tests (a unique module name: tests have no packages)."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

TOY = "px-toy"


def write_kernelspec(kernels: Path, name: str, argv: list[str], language: str = "python",
                     display_name: str | None = None) -> Path:
    folder = kernels / name
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": argv, "display_name": display_name or name, "language": language}
    (folder / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return folder


def write_script(path: Path, body: str) -> Path:
    """An executable ``#!/bin/sh`` script (a stand-in program that really runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body), encoding="utf-8")
    path.chmod(0o755)
    return path


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


