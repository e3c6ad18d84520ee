"""Which IDEs to look for and where: data only, read by :mod:`.ides`.

Each entry:

``id``, ``name``
    Stable id and display name.
``packages``
    Python distributions whose presence means "installed" (importlib.metadata; version read there).
``executables``
    Program names searched on ``PATH`` (and next to the server's interpreter, for console scripts).
``install_paths``
    Per platform (``linux``/``darwin``/``win32``), glob patterns of install locations. Placeholders:
    ``{root}`` (filesystem root, so ``{root}/opt`` is ``/opt``), ``{home}``, ``{XDG_CONFIG_HOME}``,
    and Windows variables such as ``{LOCALAPPDATA}``, ``{APPDATA}``, ``{ProgramFiles}``. A pattern
    whose variable is unset is skipped. The newest-looking match wins.
``path_exclude``
    Optional regex: install-path matches whose path matches it are ignored.
``product_codes``
    JetBrains only: accepted ``productCode`` values of ``product-info.json`` (PC = Community,
    PY = Professional), so one ``/opt/pycharm-*`` glob can feed both editions.
``version_sources``
    Tried in order: ``package`` (distribution metadata), ``product_info`` (JetBrains
    ``product-info.json``), ``info_plist`` (macOS ``.app`` bundle), ``flag`` (run the executable
    with ``version_flag`` under a timeout; only for programs known to print and exit).
``interpreter``
    How to read the Python the IDE is set to use: ``reader`` is one of ``python_env`` (the
    environment the IDE itself is installed in), ``vscode``, ``pycharm``, ``spyder``, plus the
    reader's own keys (config locations, same placeholders as above).
"""

from __future__ import annotations

from typing import Any

_VSCODE_FAMILY: list[tuple[str, str, str, str, str, str, str]] = [
    # id, name, cli, config folder, macOS app, Windows folder, remote-server folder
    ("vscode", "Visual Studio Code", "code", "Code", "Visual Studio Code.app",
     "Microsoft VS Code", ".vscode-server"),
    ("vscodium", "VSCodium", "codium", "VSCodium", "VSCodium.app",
     "VSCodium", ".vscodium-server"),
    ("vscode-insiders", "Visual Studio Code - Insiders", "code-insiders", "Code - Insiders",
     "Visual Studio Code - Insiders.app", "Microsoft VS Code Insiders",
     ".vscode-server-insiders"),
]


def _vscode(entry: tuple[str, str, str, str, str, str, str]) -> dict[str, Any]:
    ide_id, name, cli, conf, app, win, server = entry
    snap = "code" if cli == "code" else cli
    return {
        "id": ide_id,
        "name": name,
        "packages": [],
        "executables": [cli],
        "install_paths": {
            "linux": [
                f"{{root}}/usr/share/{snap}/bin/{cli}",
                f"{{root}}/snap/bin/{cli}",
                f"{{root}}/var/lib/flatpak/exports/bin/{cli}",
                f"{{home}}/.local/share/flatpak/exports/bin/{cli}",
            ],
            "darwin": [
                f"{{root}}/Applications/{app}/Contents/Resources/app/bin/{cli}",
                f"{{home}}/Applications/{app}/Contents/Resources/app/bin/{cli}",
            ],
            "win32": [
                f"{{LOCALAPPDATA}}/Programs/{win}/bin/{cli}.cmd",
                f"{{ProgramFiles}}/{win}/bin/{cli}.cmd",
            ],
        },
        "version_sources": ["flag", "info_plist"],
        "version_flag": ["--version"],
        "interpreter": {
            "reader": "vscode",
            # user settings; the first existing file per platform is read
            "user_settings": {
                "linux": [f"{{XDG_CONFIG_HOME}}/{conf}/User/settings.json"],
                "darwin": [f"{{home}}/Library/Application Support/{conf}/User/settings.json"],
                "win32": [f"{{APPDATA}}/{conf}/User/settings.json"],
            },
            # Remote-SSH machine settings (headless devices are usually reached this way)
            "machine_settings": [f"{{home}}/{server}/data/Machine/settings.json"],
            "keys": ["python.defaultInterpreterPath", "python.pythonPath"],
        },
    }


def _pycharm(edition: str) -> dict[str, Any]:
    community = edition == "community"
    return {
        "id": f"pycharm-{edition}",
        "name": "PyCharm Community Edition" if community else "PyCharm Professional",
        "packages": [],
        "executables": (["pycharm-community", "pycharm", "charm"] if community
                        else ["pycharm-professional", "pycharm", "charm"]),
        "product_codes": ["PC"] if community else ["PY"],
        # install paths whose name matches this regex belong to the other edition
        "path_exclude": r"(?i)pycharm-?professional|PyCharm-P\b" if community
        else r"(?i)community|\bCE\b|PyCharm-C\b",
        "install_paths": {
            "linux": [
                "{root}/opt/pycharm-community*" if community else "{root}/opt/pycharm-*",
                "{root}/snap/pycharm-community/current" if community
                else "{root}/snap/pycharm-professional/current",
                "{home}/.local/share/JetBrains/Toolbox/apps/pycharm-community" if community
                else "{home}/.local/share/JetBrains/Toolbox/apps/pycharm-professional",
                "{home}/.local/share/JetBrains/Toolbox/apps/PyCharm-C/ch-*/*" if community
                else "{home}/.local/share/JetBrains/Toolbox/apps/PyCharm-P/ch-*/*",
                "{home}/pycharm-community*" if community else "{home}/pycharm-*",
            ],
            "darwin": [
                "{root}/Applications/PyCharm CE.app" if community
                else "{root}/Applications/PyCharm.app",
                "{home}/Applications/PyCharm CE.app" if community
                else "{home}/Applications/PyCharm.app",
                "{root}/Applications/PyCharm Community Edition.app" if community
                else "{root}/Applications/PyCharm Professional Edition.app",
            ],
            "win32": [
                "{ProgramFiles}/JetBrains/PyCharm Community Edition*" if community
                else "{ProgramFiles}/JetBrains/PyCharm 20*",
                "{LOCALAPPDATA}/Programs/PyCharm Community" if community
                else "{LOCALAPPDATA}/Programs/PyCharm Professional",
            ],
        },
        "version_sources": ["product_info", "info_plist"],
        "interpreter": {
            "reader": "pycharm",
            "options_root": {
                "linux": ["{XDG_CONFIG_HOME}/JetBrains"],
                "darwin": ["{home}/Library/Application Support/JetBrains"],
                "win32": ["{APPDATA}/JetBrains"],
            },
            # used when no product-info.json names the data directory
            "data_dir_globs": ["PyCharmCE*"] if community else ["PyCharm2*", "PyCharm1*"],
        },
    }


IDE_TABLE: list[dict[str, Any]] = [
    {
        "id": "jupyterlab",
        "name": "JupyterLab",
        "packages": ["jupyterlab"],
        "executables": ["jupyter-lab"],
        "install_paths": {},
        "version_sources": ["package", "flag"],
        "version_flag": ["--version"],
        "interpreter": {"reader": "python_env"},
    },
    {
        "id": "notebook",
        "name": "Jupyter Notebook",
        "packages": ["notebook"],
        "executables": ["jupyter-notebook"],
        "install_paths": {},
        "version_sources": ["package", "flag"],
        "version_flag": ["--version"],
        "interpreter": {"reader": "python_env"},
    },
    *(_vscode(e) for e in _VSCODE_FAMILY),
    _pycharm("community"),
    _pycharm("professional"),
    {
        "id": "spyder",
        "name": "Spyder",
        "packages": ["spyder"],
        "executables": ["spyder", "spyder3"],
        "install_paths": {
            "linux": ["{home}/.local/spyder-6/bin/spyder", "{root}/opt/spyder*/bin/spyder"],
            "darwin": ["{root}/Applications/Spyder.app", "{home}/Applications/Spyder.app"],
            "win32": ["{LOCALAPPDATA}/spyder-6/Scripts/spyder.exe",
                      "{ProgramFiles}/Spyder/Python/Scripts/spyder.exe"],
        },
        # no "flag": `spyder --version` is not a documented option and may open the GUI
        "version_sources": ["package", "info_plist"],
        "interpreter": {
            "reader": "spyder",
            "config_files": [
                "{home}/.spyder-py3/config/spyder.ini",
                "{XDG_CONFIG_HOME}/spyder-py3/config/spyder.ini",
            ],
        },
    },
]
