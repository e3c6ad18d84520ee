"""The settings table (`parallalx_jupyter.settings.SETTINGS`) is the one source of the app's
traits, their PARALLALX_* variables and defaults: the traits, the modules that default the same
settings, and README's configuration table all say what it says."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
from pathlib import Path

import pytest

from parallalx_jupyter import settings
from parallalx_jupyter.app import ParallalxApp
from parallalx_jupyter.devices import PairingSettings
from parallalx_jupyter.server.job_registry import JobRegistry
from parallalx_jupyter.server.peer import PeerListener
from parallalx_jupyter.settings import SETTINGS, Computed

README = Path(__file__).parents[1] / "README.md"
PLAIN = [s for s in SETTINGS if not isinstance(s.default, Computed)]


@pytest.fixture(autouse=True)
def no_parallalx_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("PARALLALX_"):
            monkeypatch.delenv(key)


def readme_configuration() -> dict[str, str]:
    """trait -> default cell of the table under README's "### Configuration"."""
    text = README.read_text()
    section = text.split("### Configuration", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or cells[0] in ("trait", "---"):
            continue
        assert re.fullmatch(r"`\w+`", cells[0]), f"one trait per row, in backticks: {line}"
        rows[cells[0].strip("`")] = cells[1]
    return rows


def readme_value(cell: str, setting: settings.Setting) -> object:
    """The default as README writes it: `text`, a number with a unit (600 s, 5/s), or words."""
    text = cell.replace("`", "").strip()
    if isinstance(setting.default, Computed) or setting.type is str:
        return text
    if setting.type is bool:
        assert text in ("True", "False"), f"{setting.name}: README's default {cell!r}"
        return text == "True"
    number = re.match(r"-?\d+(\.\d+)?", text)
    assert number, f"{setting.name}: README's default {cell!r} is not a number"
    return setting.type(float(number.group()))


def test_readme_lists_every_setting_with_the_tables_default():
    rows = readme_configuration()
    assert list(rows) == [s.name for s in SETTINGS]
    for s in SETTINGS:
        want = s.default.shown if isinstance(s.default, Computed) else s.default
        assert readme_value(rows[s.name], s) == want, s.name


def test_the_traits_are_the_table():
    traits = ParallalxApp.class_own_traits(config=True)
    assert set(traits) == {s.name for s in SETTINGS}
    app = ParallalxApp()
    for s in SETTINGS:
        assert f"Env: {s.env}." in traits[s.name].help
        if not isinstance(s.default, Computed):
            assert getattr(app, s.name) == s.default, s.name
            assert type(getattr(app, s.name)) is s.type
    assert app.scheduler_ip == app.peer_ip


@pytest.mark.parametrize("setting", PLAIN, ids=lambda s: s.name)
def test_each_environment_variable_sets_its_trait(monkeypatch, setting):
    value, want = {str: ("10.1.2.3", "10.1.2.3"), int: ("4321", 4321), float: ("12.5", 12.5),
                   bool: ("0" if setting.default else "1", not setting.default)}[setting.type]
    monkeypatch.setenv(setting.env, value)
    assert getattr(ParallalxApp(), setting.name) == want


@pytest.mark.parametrize(("raw", "want"), [("0", False), ("false", False), ("No", False),
                                           ("off", False), ("1", True), (" TRUE ", True),
                                           ("yes", True), ("on", True), ("", None)])
def test_a_bool_setting_reads_the_usual_words(monkeypatch, raw, want):
    monkeypatch.setenv("PARALLALX_MAIN_DEVICE_TRAINS", raw)
    assert settings.from_env("main_device_trains") is want
    assert ParallalxApp().main_device_trains is (True if want is None else want)


def test_a_bad_bool_names_the_variable_and_the_words(monkeypatch):
    monkeypatch.setenv("PARALLALX_MAIN_DEVICE_TRAINS", "2")
    with pytest.raises(ValueError, match=r"PARALLALX_MAIN_DEVICE_TRAINS='2'.*1/0, true/false"):
        settings.from_env("main_device_trains")


def test_a_bad_environment_value_names_the_variable(monkeypatch):
    monkeypatch.setenv("PARALLALX_PEER_PORT", "eighty")
    with pytest.raises(ValueError, match="PARALLALX_PEER_PORT='eighty'"):
        settings.from_env("peer_port")


def test_modules_default_to_the_table():
    listener = inspect.signature(PeerListener).parameters
    assert listener["rate"].default == settings.default("peer_rate")
    assert listener["burst"].default == settings.default("peer_burst")
    assert listener["global_rate"].default == settings.default("peer_global_rate") == 200.0
    pairing = {f.name: f.default for f in dataclasses.fields(PairingSettings)}
    for name in ("request_ttl", "reveal_window", "clock_skew", "max_pending",
                 "max_pending_per_ip", "poll_interval"):
        assert pairing[name] == settings.default(name), name
    registry = inspect.signature(JobRegistry).parameters
    assert registry["stale_after"].default == settings.default("job_stale_after")


def test_client_finds_the_apps_home(monkeypatch, tmp_path):
    from parallalx_jupyter.client import default_home

    assert str(default_home()) == ParallalxApp().home
    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path))
    assert default_home() == tmp_path
