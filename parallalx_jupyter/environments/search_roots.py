"""Where IDE detection looks: home, PATH, workspace, filesystem root, OS — all injectable.

Tests (and a server asked about another user's workspace) pass their own roots; production uses
:meth:`SearchRoots.from_environment`. Patterns use ``{placeholder}`` names (see :mod:`.ide_table`).
"""

from __future__ import annotations

import glob
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variables the IDE table may name as placeholders.
ENV_KEYS = ("APPDATA", "LOCALAPPDATA", "ProgramFiles", "ProgramFiles(x86)", "XDG_CONFIG_HOME",
            "USERPROFILE")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_()]*)\}")


def normalise_platform(name: str) -> str:
    if name.startswith("linux"):
        return "linux"
    if name in ("win32", "cygwin", "msys"):
        return "win32"
    if name == "darwin":
        return "darwin"
    return "linux"  # BSDs and the rest follow the XDG layout


@dataclass(frozen=True)
class SearchRoots:
    home: Path
    path: str = ""
    workspace: Path | None = None
    platform: str = "linux"
    env: Mapping[str, str] = field(default_factory=dict)
    #: prefix for absolute system locations (``/opt``, ``/Applications``, ``/snap``)
    root: Path = Path("/")
    #: the interpreter the server runs in; Jupyter packages are looked up in its environment
    python: str = sys.executable
    #: where to look for Python distributions; ``None`` means this process's ``sys.path``
    site_paths: tuple[str, ...] | None = None

    @classmethod
    def from_environment(cls, workspace: str | os.PathLike[str] | None = None) -> SearchRoots:
        return cls(
            home=Path.home(),
            path=os.environ.get("PATH", ""),
            workspace=Path(workspace) if workspace is not None else None,
            platform=normalise_platform(sys.platform),
            env={k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)},
            root=Path(os.path.abspath(os.sep)),
        )

    def variables(self) -> dict[str, str]:
        out = dict(self.env)
        out["home"] = str(self.home)
        out["root"] = str(self.root).rstrip("/\\")
        out.setdefault("XDG_CONFIG_HOME", str(self.home / ".config"))
        if self.workspace is not None:
            out["workspace"] = str(self.workspace)
        return out

    def expand(self, pattern: str) -> str | None:
        """Fill ``{placeholders}``; ``None`` when one of them is unknown (e.g. unset on this OS)."""
        values = self.variables()
        missing = [m for m in _PLACEHOLDER.findall(pattern) if m not in values]
        if missing:
            return None
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], pattern)

    def glob(self, pattern: str) -> list[Path]:
        """Existing paths matching an expanded pattern, newest-looking (highest sort) first."""
        expanded = self.expand(pattern)
        if expanded is None:
            return []
        if not glob.has_magic(expanded):
            return [Path(expanded)] if os.path.exists(expanded) else []
        return [Path(p) for p in sorted(glob.glob(expanded), key=_natural_key, reverse=True)]

    def for_platform(self, per_platform: Mapping[str, list[str]] | None) -> list[str]:
        return list((per_platform or {}).get(self.platform, []))


def _natural_key(text: str) -> list[object]:
    """``2024.10`` sorts after ``2024.9``."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text) if t]
