"""Turn pip's output lines into per-package progress events.

Works on ``pip install --progress-bar off`` output (stdout and stderr merged), pip 21 to 25::

    Collecting foo==1.0                      -> foo collecting
    Processing ./wh/foo-1.0-py3-none-any.whl -> foo collecting
      Downloading foo-1.0-py3-none-any.whl   -> foo downloading   (also "Using cached")
    Building wheel for foo (pyproject.toml)  -> foo installing
    Installing collected packages: foo, bar  -> foo installing, bar installing
      Attempting uninstall: foo              -> foo installing
    Successfully installed foo-1.0 bar-2.0   -> foo done, bar done
    Requirement already satisfied: foo ...   -> foo done
    ERROR: No matching distribution found for foo==9  -> foo failed

Lines that name no package produce no event but are kept as context (the last error line).
"""

from __future__ import annotations

import re
from typing import Literal, TypedDict

from packaging.utils import canonicalize_name

Phase = Literal["collecting", "downloading", "installing", "done", "failed"]


class InstallEvent(TypedDict):
    package: str | None
    phase: Phase
    message: str


_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_ARTIFACT = re.compile(
    r"([A-Za-z0-9][A-Za-z0-9._]*?)-\d[^-/\\\s]*(?:-[^/\\\s]*)?\.(?:whl|tar\.gz|zip)"
)


def name_from_artifact(text: str) -> str | None:
    """``px_toy-2.0-py3-none-any.whl`` -> ``px-toy``."""
    m = _ARTIFACT.search(text.rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    return canonicalize_name(m.group(1)) if m else None


def name_from_requirement(text: str) -> str | None:
    m = re.match(rf"\s*({_NAME})", text)
    return canonicalize_name(m.group(1)) if m else None


class PipOutputParser:
    """Feed lines in order; each call returns the events that line produces."""

    def __init__(self) -> None:
        self.current: str | None = None
        self.last_error: str | None = None
        self.failed: list[str] = []
        self.done: set[str] = set()

    def _ev(self, package: str | None, phase: Phase, message: str) -> InstallEvent:
        if phase == "done" and package:
            self.done.add(package)
        if phase == "failed" and package and package not in self.failed:
            self.failed.append(package)
        return {"package": package, "phase": phase, "message": message}

    def feed(self, raw: str) -> list[InstallEvent]:
        line = raw.rstrip("\r\n")
        text = line.strip()
        if not text:
            return []
        if text.startswith(("ERROR:", "error:")):
            self.last_error = text
            return self._error(text)
        if m := re.match(r"Collecting (.+)", text):
            self.current = name_from_requirement(m.group(1))
            return [self._ev(self.current, "collecting", text)]
        if m := re.match(r"Processing (.+)", text):
            self.current = name_from_artifact(m.group(1)) or self.current
            return [self._ev(self.current, "collecting", text)]
        if m := re.match(r"(?:Downloading|Using cached|File was already downloaded) (.+)", text):
            pkg = name_from_artifact(m.group(1)) or self.current
            return [self._ev(pkg, "downloading", text)]
        if m := re.match(rf"Building wheels? for ({_NAME})", text):
            return [self._ev(canonicalize_name(m.group(1)), "installing", text)]
        if m := re.match(rf"Failed to build ({_NAME}(?:\s+{_NAME})*)", text):
            return [self._ev(canonicalize_name(n), "failed", text) for n in m.group(1).split()]
        if m := re.match(r"Installing collected packages: (.+)", text):
            names = [canonicalize_name(n.strip()) for n in m.group(1).split(",") if n.strip()]
            return [self._ev(n, "installing", text) for n in names]
        if m := re.match(rf"Attempting uninstall: ({_NAME})", text):
            return [self._ev(canonicalize_name(m.group(1)), "installing", text)]
        if m := re.match(r"Successfully installed (.+)", text):
            return [self._ev(canonicalize_name(item.rsplit("-", 1)[0]), "done", text)
                    for item in m.group(1).split()]
        if m := re.match(rf"Requirement already satisfied: ({_NAME})", text):
            return [self._ev(canonicalize_name(m.group(1)), "done", text)]
        return []

    def _error(self, text: str) -> list[InstallEvent]:
        patterns = (
            rf"No matching distribution found for ({_NAME})",
            rf"Could not find a version that satisfies the requirement ({_NAME})",
            rf"Failed building wheel for ({_NAME})",
            rf"Could not build wheels for ({_NAME})",
            rf"Cannot install ({_NAME})",
            rf"Could not install packages due to an \w+: .*?({_NAME})-\d",
        )
        for pat in patterns:
            if m := re.search(pat, text):
                pkg = canonicalize_name(m.group(1))
                return [] if pkg in self.failed else [self._ev(pkg, "failed", text)]
        return []
