"""Read which Python interpreter an IDE is configured to use, from its own config files.

One reader per IDE family, each returning an :class:`InterpreterSetting` (the path, the file and
key it came from, and a note when the setting exists but cannot be resolved). Readers never raise
on malformed files: a broken config is reported in ``note``.
"""

from __future__ import annotations

import configparser
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import jsonc
from .search_roots import SearchRoots


@dataclass(frozen=True)
class InterpreterSetting:
    interpreter: str | None = None
    source: str | None = None
    note: str | None = None


NOT_SET = InterpreterSetting()


def shebang_python(script: str | os.PathLike[str]) -> str | None:
    """The interpreter named by a console script's ``#!`` line (``None`` for binaries)."""
    try:
        with open(script, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].decode("utf-8", "replace").strip().split()
    if not parts:
        return None
    if os.path.basename(parts[0]) == "env" and len(parts) > 1:
        return parts[1]
    return parts[0]


def read_python_env(own_python: str | None, how: str | None) -> InterpreterSetting:
    """The IDE runs in a Python environment of its own (JupyterLab, Notebook, pip-installed
    Spyder); kernels may still choose another one."""
    if own_python is None:
        return NOT_SET
    return InterpreterSetting(own_python, how)


# --------------------------------------------------------------------------- VS Code family
_VSCODE_VAR = re.compile(r"\$\{([^}]+)\}")


def _vscode_expand(value: str, roots: SearchRoots, relative_to: Path | None) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in ("workspaceFolder", "workspaceRoot") and roots.workspace is not None:
            return str(roots.workspace)
        if name == "userHome":
            return str(roots.home)
        if name.startswith("env:"):
            return roots.env.get(name[4:], os.environ.get(name[4:], ""))
        return m.group(0)

    value = _VSCODE_VAR.sub(sub, value.strip())
    if value == "~" or value.startswith(("~/", "~\\")):
        value = str(roots.home) + value[1:]
    has_dir = "/" in value or "\\" in value
    if relative_to is not None and has_dir and not os.path.isabs(value):
        value = str(relative_to / value)  # VS Code resolves relative paths from the workspace
    return value


def _setting(data: Any, key: str) -> Any:
    """A VS Code setting, flat (``"python.x": 1``) or nested (``"python": {"x": 1}``)."""
    if not isinstance(data, Mapping):
        return None
    if key in data:
        return data[key]
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def read_vscode(cfg: Mapping[str, Any], roots: SearchRoots) -> InterpreterSetting:
    """Workspace ``.vscode/settings.json`` beats Remote machine settings beats user settings
    (VS Code's own precedence)."""
    candidates: list[tuple[Path, Path | None]] = []
    if roots.workspace is not None:
        candidates.append((roots.workspace / ".vscode" / "settings.json", roots.workspace))
    for pattern in cfg.get("machine_settings", []):
        candidates += [(p, None) for p in roots.glob(pattern)]
    for pattern in roots.for_platform(cfg.get("user_settings")):
        candidates += [(p, None) for p in roots.glob(pattern)]
    notes = []
    for path, relative_to in candidates:
        if not path.is_file():
            continue
        try:
            data = jsonc.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            notes.append(f"{path} unreadable: {exc}")
            continue
        for key in cfg.get("keys", ["python.defaultInterpreterPath"]):
            value = _setting(data, key)
            if isinstance(value, str) and value.strip():
                return InterpreterSetting(
                    _vscode_expand(value, roots, relative_to), f"{path}: {key}",
                    "; ".join(notes) or None,
                )
    return InterpreterSetting(note="; ".join(notes) or None)


# --------------------------------------------------------------------------- PyCharm
def _xml(path: Path) -> ET.Element | None:
    try:
        return ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None


def project_sdk_name(workspace: Path) -> tuple[str | None, Path]:
    """``project-jdk-name`` of ``.idea/misc.xml`` (the project interpreter's SDK name)."""
    misc = workspace / ".idea" / "misc.xml"
    root = _xml(misc) if misc.is_file() else None
    if root is None:
        return None, misc
    for comp in root.iter("component"):
        if comp.get("name") == "ProjectRootManager" and comp.get("project-jdk-name"):
            return comp.get("project-jdk-name"), misc
    return None, misc


def sdk_home_paths(jdk_table: Path) -> dict[str, str]:
    """SDK name -> ``homePath`` from a JetBrains ``options/jdk.table.xml``."""
    root = _xml(jdk_table)
    if root is None:
        return {}
    out: dict[str, str] = {}
    for jdk in root.iter("jdk"):
        name = jdk.find("name")
        home = jdk.find("homePath")
        if name is not None and home is not None and name.get("value") and home.get("value"):
            out[str(name.get("value"))] = str(home.get("value"))
    return out


def _jetbrains_expand(value: str, roots: SearchRoots, install_dir: Path | None) -> str:
    macros = {"$USER_HOME$": str(roots.home)}
    if roots.workspace is not None:
        macros["$PROJECT_DIR$"] = str(roots.workspace)
    if install_dir is not None:
        macros["$APPLICATION_HOME_DIR$"] = str(install_dir)
    for macro, repl in macros.items():
        value = value.replace(macro, repl)
    return value


def jetbrains_option_dirs(
    cfg: Mapping[str, Any], roots: SearchRoots, data_dir_name: str | None
) -> list[Path]:
    """``<config>/JetBrains/<data dir>/options`` candidates, the product's own first."""
    out: list[Path] = []
    for base in roots.for_platform(cfg.get("options_root")):
        if data_dir_name:
            exact = roots.expand(f"{base}/{data_dir_name}/options")
            if exact is not None:
                out.append(Path(exact))
        for pattern in cfg.get("data_dir_globs", []):
            out += [p / "options" for p in roots.glob(f"{base}/{pattern}") if p.is_dir()]
    return list(dict.fromkeys(out))


def read_pycharm(
    cfg: Mapping[str, Any],
    roots: SearchRoots,
    *,
    data_dir_name: str | None = None,
    install_dir: Path | None = None,
) -> InterpreterSetting:
    """The workspace project's SDK (``.idea/misc.xml``) mapped through ``jdk.table.xml``."""
    if roots.workspace is None:
        return NOT_SET
    sdk, misc = project_sdk_name(roots.workspace)
    if sdk is None:
        return NOT_SET
    tables = [d / "jdk.table.xml" for d in jetbrains_option_dirs(cfg, roots, data_dir_name)]
    tables = [t for t in tables if t.is_file()]
    for table in tables:
        home = sdk_home_paths(table).get(sdk)
        if home:
            return InterpreterSetting(
                _jetbrains_expand(home, roots, install_dir),
                f"{misc}: project-jdk-name {sdk!r} -> {table}: homePath",
            )
    where = ", ".join(map(str, tables)) or "no jdk.table.xml found"
    return InterpreterSetting(
        None, f"{misc}: project-jdk-name", f"SDK {sdk!r} is not defined in {where}"
    )


# --------------------------------------------------------------------------- Spyder
def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "on")


def read_spyder(
    cfg: Mapping[str, Any], roots: SearchRoots, own_python: str | None
) -> InterpreterSetting:
    """``[main_interpreter]``: ``default = True`` means Spyder's own Python, otherwise
    ``custom_interpreter`` (``executable`` in some versions)."""
    for pattern in cfg.get("config_files", []):
        for path in roots.glob(pattern):
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            try:
                parser.read(path, encoding="utf-8")
            except (configparser.Error, OSError, UnicodeDecodeError) as exc:
                return InterpreterSetting(note=f"{path} unreadable: {exc}")
            if not parser.has_section("main_interpreter"):
                continue
            section = parser["main_interpreter"]
            if _truthy(section.get("default", "True")):
                return InterpreterSetting(
                    own_python, f"{path}: [main_interpreter] default",
                    None if own_python else "Spyder's own interpreter could not be located",
                )
            for key in ("custom_interpreter", "executable"):
                value = (section.get(key) or "").strip()
                if value:
                    if value.startswith("~"):
                        value = str(roots.home) + value[1:]
                    return InterpreterSetting(value, f"{path}: [main_interpreter] {key}")
            return InterpreterSetting(
                note=f"{path}: [main_interpreter] is custom but names no interpreter"
            )
    return NOT_SET
