"""ParallalxApp configuration: PARALLALX_* environment variables, config winning over them."""

from __future__ import annotations

from traitlets.config import Config

from parallalx_jupyter.app import ParallalxApp, advertised_urls


def test_environment_variables_set_the_traits(monkeypatch, tmp_path):
    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("PARALLALX_DEVICE_NAME", "from-env")
    monkeypatch.setenv("PARALLALX_PEER_PORT", "9123")
    monkeypatch.setenv("PARALLALX_REQUEST_TTL", "42.5")
    monkeypatch.setenv("PARALLALX_SCHEDULER_PORT", "9124")
    app = ParallalxApp()
    assert app.home == str(tmp_path / "h")
    assert app.device_name == "from-env"
    assert (app.peer_port, app.request_ttl, app.scheduler_port) == (9123, 42.5, 9124)
    assert app.scheduler_ip == app.peer_ip == "0.0.0.0"


def test_config_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("PARALLALX_DEVICE_NAME", "from-env")
    monkeypatch.setenv("PARALLALX_PEER_IP", "127.0.0.1")
    app = ParallalxApp(config=Config({"ParallalxApp": {"device_name": "from-config"}}))
    assert app.device_name == "from-config"
    assert app.peer_ip == app.scheduler_ip == "127.0.0.1"


def test_advertised_urls():
    assert advertised_urls("192.168.1.5", 8476) == ["https://192.168.1.5:8476"]
    assert advertised_urls("::1", 1) == ["https://[::1]:1"]
    assert all(u.startswith("https://") for u in advertised_urls("0.0.0.0", 8476))
