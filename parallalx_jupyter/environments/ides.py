"""Detect the IDEs on this device, their versions, and the Python each is configured to use.

Driven by :data:`.ide_table.IDE_TABLE`; every location comes from :class:`.SearchRoots`, so a
test (or a caller asking about one workspace) injects home, PATH, workspace and filesystem root.
File reading happens in a worker thread; ``--version`` probes are subprocesses with a timeout.
"""

from __future__ import annotations

import asyncio
import importlib.metadata as md
import json
import os
import plistlib
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ._process import ProcessTimeout, run_process
from .ide_settings import (
    NOT_SET,
    InterpreterSetting,
    read_pycharm,
    read_python_env,
    read_spyder,
    read_vscode,
    shebang_python,
)
from .ide_table import IDE_TABLE
from .search_roots import SearchRoots

_VERSION_RE = re.compile(r"\d+(?:\.\d+)+(?:[-.]?[A-Za-z]+\d*)?")


@dataclass(frozen=True)
class IdeInfo:
    id: str
    name: str
    found: bool
    path: str | None = None
    version: str | None = None
    interpreter: str | None = None
    interpreter_source: str | None = None
    #: how it was found: ``package``, ``path`` (on PATH) or ``install_dir``
    detected_by: str | None = None
    #: why a setting or version could not be resolved, when it could not
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Located:
    found: bool = False
    detected_by: str | None = None
    path: Path | None = None
    executable: Path | None = None
    install_dir: Path | None = None
    version: str | None = None
    product_info: dict[str, Any] | None = None
    own_python: str | None = None
    own_python_how: str | None = None


# --------------------------------------------------------------------------- locating
def _distribution(name: str, roots: SearchRoots) -> md.Distribution | None:
    paths = list(roots.site_paths) if roots.site_paths is not None else list(sys.path)
    return next(iter(md.distributions(name=name, path=paths)), None)


def _which(name: str, roots: SearchRoots) -> Path | None:
    found = shutil.which(name, path=roots.path)
    if found is None:  # console scripts next to the server's interpreter, even if not on PATH
        found = shutil.which(name, path=str(Path(roots.python).parent))
    return Path(found) if found else None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _install_root(match: Path) -> Path:
    """The folder that holds ``product-info.json``/``Contents``: a match may be the folder, a
    ``.app`` bundle, or a launcher inside ``bin/``."""
    if match.is_dir():
        return match
    parent = match.parent
    return parent.parent if parent.name.lower() in ("bin", "scripts") else parent


def _product_info(root: Path) -> dict[str, Any] | None:
    for candidate in (root / "product-info.json",
                      root / "Contents" / "Resources" / "product-info.json"):
        if candidate.is_file():
            return _read_json(candidate)
    return None


def _app_bundle(path: Path | None) -> Path | None:
    while path is not None and path != path.parent:
        if path.suffix == ".app":
            return path
        path = path.parent
    return None


def _launcher(root: Path, entry: Mapping[str, Any]) -> Path | None:
    """A program to report as ``path`` inside an install dir (``bin/pycharm.sh`` and the like)."""
    names = [*entry.get("executables", []), "pycharm.sh", "pycharm64.exe", "pycharm.exe"]
    for sub in ("bin", "Contents/MacOS", ""):
        for name in names:
            cand = root / sub / name if sub else root / name
            if cand.is_file():
                return cand
    return None


def _locate(entry: Mapping[str, Any], roots: SearchRoots) -> _Located:
    loc = _Located()
    codes = entry.get("product_codes")
    exclude = re.compile(entry["path_exclude"]) if entry.get("path_exclude") else None

    for pkg in entry.get("packages", []):
        dist = _distribution(pkg, roots)
        if dist is not None:
            loc.found, loc.detected_by = True, "package"
            loc.version = dist.version
            loc.own_python, loc.own_python_how = roots.python, f"environment of package {pkg}"
            break

    for name in entry.get("executables", []):
        exe = _which(name, roots)
        if exe is None:
            continue
        root = _install_root(exe.resolve())
        info = _product_info(root) if codes else None
        if codes and info is not None and info.get("productCode") not in codes:
            continue  # the other PyCharm edition
        if exclude is not None and exclude.search(str(exe.resolve())):
            continue
        loc.executable = exe
        loc.found = True
        loc.detected_by = loc.detected_by or "path"
        if info is not None:
            loc.product_info, loc.install_dir = info, root
        if loc.own_python is None:
            py = shebang_python(exe)
            if py:
                loc.own_python, loc.own_python_how = py, f"#! line of {exe}"
        break

    if loc.install_dir is None:
        for pattern in roots.for_platform(entry.get("install_paths")):
            for match in roots.glob(pattern):
                if exclude is not None and exclude.search(str(match)):
                    continue
                root = _install_root(match)
                info = _product_info(root) if codes else None
                if codes and info is not None and info.get("productCode") not in codes:
                    continue
                loc.install_dir, loc.product_info = root, info
                if loc.executable is None:
                    loc.executable = match if match.is_file() else _launcher(root, entry)
                loc.found = True
                loc.detected_by = loc.detected_by or "install_dir"
                break
            if loc.install_dir is not None:
                break

    loc.path = loc.executable or loc.install_dir
    if loc.path is None and loc.detected_by == "package":
        dist = next((d for p in entry["packages"] if (d := _distribution(p, roots))), None)
        if dist is not None:
            loc.path = Path(str(dist.locate_file("")))
    return loc


# --------------------------------------------------------------------------- versions
def _static_version(source: str, loc: _Located) -> str | None:
    if source == "package":
        return loc.version if loc.detected_by == "package" else None
    if source == "product_info" and loc.product_info:
        version = loc.product_info.get("version")
        return str(version) if version else None
    if source == "info_plist":
        bundle = _app_bundle(loc.install_dir) or _app_bundle(loc.executable)
        if bundle is None:
            return None
        try:
            with open(bundle / "Contents" / "Info.plist", "rb") as f:
                plist = plistlib.load(f)
        except (OSError, plistlib.InvalidFileException, ValueError):
            return None
        version = plist.get("CFBundleShortVersionString")
        return str(version) if version else None
    return None


async def _flag_version(exe: Path, flag: Sequence[str], timeout: float) -> tuple[str | None, str]:
    try:
        result = await run_process([str(exe), *flag], timeout=timeout)
    except ProcessTimeout:
        return None, f"{exe} {' '.join(flag)} did not answer within {timeout:g} s"
    except OSError as exc:
        return None, f"{exe} could not run: {exc.strerror or exc}"
    match = _VERSION_RE.search(result.stdout) or _VERSION_RE.search(result.stderr)
    if match is None:
        return None, f"{exe} {' '.join(flag)} printed no version"
    return match.group(0), ""


# --------------------------------------------------------------------------- interpreter
def _interpreter(entry: Mapping[str, Any], roots: SearchRoots, loc: _Located) -> InterpreterSetting:
    cfg = entry.get("interpreter") or {}
    reader = cfg.get("reader")
    if reader == "python_env":
        return read_python_env(loc.own_python, loc.own_python_how) if loc.found else NOT_SET
    if reader == "vscode":
        return read_vscode(cfg, roots)
    if reader == "pycharm":
        ddn = (loc.product_info or {}).get("dataDirectoryName")
        return read_pycharm(cfg, roots, data_dir_name=ddn, install_dir=loc.install_dir)
    if reader == "spyder":
        return read_spyder(cfg, roots, loc.own_python)
    return NOT_SET


# --------------------------------------------------------------------------- entry point
async def detect_ide(
    entry: Mapping[str, Any], roots: SearchRoots, *, version_timeout: float = 5.0
) -> IdeInfo:
    loc = await asyncio.to_thread(_locate, entry, roots)
    notes: list[str] = []
    version = None
    for source in entry.get("version_sources", []):
        if source == "flag":
            if loc.executable is not None and entry.get("version_flag"):
                version, why = await _flag_version(
                    loc.executable, entry["version_flag"], version_timeout
                )
                if why:
                    notes.append(why)
        else:
            version = await asyncio.to_thread(_static_version, source, loc)
        if version:
            break
    setting = await asyncio.to_thread(_interpreter, entry, roots, loc)
    if setting.note:
        notes.append(setting.note)
    return IdeInfo(
        id=entry["id"],
        name=entry["name"],
        found=loc.found,
        path=str(loc.path) if loc.path is not None else None,
        version=version if loc.found else None,
        interpreter=setting.interpreter,
        interpreter_source=setting.source,
        detected_by=loc.detected_by,
        note="; ".join(notes) or None,
    )


async def detect_ides(
    roots: SearchRoots | None = None,
    *,
    table: Sequence[Mapping[str, Any]] = IDE_TABLE,
    version_timeout: float = 5.0,
) -> list[IdeInfo]:
    """Every IDE of ``table``, found or not, in table order."""
    roots = roots or SearchRoots.from_environment(workspace=os.getcwd())
    return list(await asyncio.gather(
        *(detect_ide(entry, roots, version_timeout=version_timeout) for entry in table)
    ))
