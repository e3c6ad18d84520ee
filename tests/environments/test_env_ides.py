"""IDE detection against real config files and programs laid out in temporary folders."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import sys
from pathlib import Path

import pytest
from env_helpers import write_script

from parallalx_jupyter.environments import SearchRoots, detect_ides
from parallalx_jupyter.environments.ide_table import IDE_TABLE
from parallalx_jupyter.environments.jsonc import loads as jsonc_loads

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX layout and shell scripts")


@pytest.fixture
def roots(tmp_path: Path) -> SearchRoots:
    for d in ("home", "bin", "root", "work", "site"):
        (tmp_path / d).mkdir()
    return SearchRoots(
        home=tmp_path / "home",
        path=str(tmp_path / "bin"),
        workspace=tmp_path / "work",
        platform="linux",
        root=tmp_path / "root",
        python=str(tmp_path / "envs" / "server" / "bin" / "python"),
        site_paths=(str(tmp_path / "site"),),
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def fake_dist(site: Path, name: str, version: str) -> None:
    write(site / f"{name}-{version}.dist-info" / "METADATA",
          f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


async def detect(roots: SearchRoots, **kw) -> dict:
    return {ide.id: ide for ide in await detect_ides(roots, **kw)}


def test_jsonc_tolerates_comments_and_trailing_commas():
    text = '\ufeff// c\n{"a": "x//y /* no */", /* b */ "b": [1, 2,], "c": "q\\"//",\n}\n'
    assert jsonc_loads(text) == {"a": "x//y /* no */", "b": [1, 2], "c": 'q"//'}
    assert jsonc_loads("  // only a comment\n") == {}


async def test_every_table_entry_is_reported_even_on_an_empty_machine(roots):
    ides = await detect_ides(roots)
    assert [i.id for i in ides] == [e["id"] for e in IDE_TABLE]
    required = {"jupyterlab", "notebook", "vscode", "vscodium", "vscode-insiders",
                "pycharm-community", "pycharm-professional", "spyder"}
    assert required <= {i.id for i in ides}
    assert not any(i.found for i in ides)
    for ide in ides:
        assert set(ide.to_dict()) >= {"id", "name", "found", "path", "version", "interpreter",
                                      "interpreter_source"}


async def test_vscode_version_from_cli_and_interpreter_from_settings(roots):
    code = write_script(Path(roots.path) / "code", 'echo "1.90.2"\necho "abc123"\necho "x64"\n')
    user = write(roots.home / ".config" / "Code" / "User" / "settings.json", """\
        // user settings, as VS Code writes them
        {
            "editor.fontSize": 13, /* inline */
            "python.defaultInterpreterPath": "~/venvs/ml/bin/python", // trailing comment
            "files.exclude": {"**/.git": true,},
        }
        """)
    ides = await detect(roots)
    vscode = ides["vscode"]
    assert vscode.found and vscode.detected_by == "path"
    assert vscode.path == str(code) and vscode.version == "1.90.2"
    assert vscode.interpreter == str(roots.home / "venvs/ml/bin/python")
    assert vscode.interpreter_source == f"{user}: python.defaultInterpreterPath"
    assert not ides["vscodium"].found and ides["vscodium"].interpreter is None

    # the workspace's .vscode/settings.json wins over the user's, ${workspaceFolder} expanded
    ws = write(roots.workspace / ".vscode" / "settings.json",
               '{\n  // project venv\n  "python.defaultInterpreterPath":'
               ' "${workspaceFolder}/.venv/bin/python",\n}\n')
    vscode = (await detect(roots))["vscode"]
    assert vscode.interpreter == str(roots.workspace / ".venv/bin/python")
    assert vscode.interpreter_source == f"{ws}: python.defaultInterpreterPath"
    # every VS Code flavour reads the workspace folder's settings
    assert (await detect(roots))["vscodium"].interpreter == vscode.interpreter


async def test_version_probe_that_hangs_is_cut_off(roots):
    write_script(Path(roots.path) / "codium", "sleep 30\n")
    codium = (await detect(roots, version_timeout=0.5))["vscodium"]
    assert codium.found and codium.version is None
    assert "did not answer within 0.5 s" in codium.note


async def test_pycharm_project_sdk_through_jdk_table(roots):
    install = roots.root / "opt" / "pycharm-community-2024.1.4"
    write(install / "product-info.json", json.dumps({
        "name": "PyCharm", "version": "2024.1.4", "buildNumber": "241.18034.82",
        "productCode": "PC", "dataDirectoryName": "PyCharmCE2024.1"}))
    launcher = write_script(install / "bin" / "pycharm.sh", "exit 0\n")
    options = roots.home / ".config" / "JetBrains" / "PyCharmCE2024.1" / "options"
    table = write(options / "jdk.table.xml", """\
<application>
  <component name="ProjectJdkTable">
    <jdk version="2">
      <name value="Python 3.11 (other)" />
      <type value="Python SDK" />
      <homePath value="/usr/bin/python3.11" />
    </jdk>
    <jdk version="2">
      <name value="Python 3.11 (work)" />
      <type value="Python SDK" />
      <version value="Python 3.11.7" />
      <homePath value="$USER_HOME$/venvs/work/bin/python" />
      <roots />
    </jdk>
  </component>
</application>
""")
    misc = write(roots.workspace / ".idea" / "misc.xml", """\
<?xml version="1.0" encoding="UTF-8"?>
<project version="4">
  <component name="Black"><option name="sdkName" value="Python 3.11 (work)" /></component>
  <component name="ProjectRootManager" version="2" project-jdk-name="Python 3.11 (work)"
             project-jdk-type="Python SDK" />
</project>
""")
    ides = await detect(roots)
    ce = ides["pycharm-community"]
    assert ce.found and ce.detected_by == "install_dir"
    assert ce.path == str(launcher) and ce.version == "2024.1.4"
    assert ce.interpreter == str(roots.home / "venvs/work/bin/python")
    assert str(misc) in ce.interpreter_source and str(table) in ce.interpreter_source

    pro = ides["pycharm-professional"]  # product code PC is not the Professional edition
    assert not pro.found and pro.interpreter is None
    assert "not defined" in pro.note


async def test_spyder_custom_interpreter_and_package_version(roots):
    fake_dist(Path(roots.site_paths[0]), "spyder", "6.0.1")
    ini = write(roots.home / ".spyder-py3" / "config" / "spyder.ini", """\
[main]
version = 84.0.0

[main_interpreter]
default = False
custom = True
custom_interpreter = /opt/conda/envs/ml/bin/python
executable = /opt/conda/envs/ml/bin/python
""")
    spyder = (await detect(roots))["spyder"]
    assert spyder.found and spyder.detected_by == "package" and spyder.version == "6.0.1"
    assert spyder.interpreter == "/opt/conda/envs/ml/bin/python"
    assert spyder.interpreter_source == f"{ini}: [main_interpreter] custom_interpreter"

    ini.write_text("[main_interpreter]\ndefault = True\ncustom = False\n", encoding="utf-8")
    spyder = (await detect(roots))["spyder"]
    assert spyder.interpreter == roots.python  # Spyder's own environment
    assert spyder.interpreter_source == f"{ini}: [main_interpreter] default"


async def test_jupyter_from_package_metadata_and_console_script(roots):
    fake_dist(Path(roots.site_paths[0]), "jupyterlab", "4.9.1")
    # a console script of another environment: its #! line names that environment's Python
    script = Path(roots.path) / "jupyter-notebook"
    script.write_text(f"#!{sys.executable}\nprint('7.3.2')\n", encoding="utf-8")
    script.chmod(0o755)
    ides = await detect(roots)
    lab = ides["jupyterlab"]
    assert lab.found and lab.detected_by == "package" and lab.version == "4.9.1"
    assert lab.interpreter == roots.python
    nb = ides["notebook"]
    assert nb.found and nb.detected_by == "path" and nb.version == "7.3.2"
    assert nb.interpreter == sys.executable and nb.interpreter_source == f"#! line of {script}"


async def test_this_machine_with_default_roots():
    ides = {i.id: i for i in await detect_ides()}
    lab = ides["jupyterlab"]
    assert lab.found and lab.version == md.version("jupyterlab")
    assert lab.interpreter == sys.executable
