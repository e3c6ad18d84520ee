"""How a kernel picks its device when its own Jupyter server is slow to answer: a server that
gives no answer in time is not ruled out, so the kernel never moves to the device named in its
environment (`PARALLALX_URL`) because its own is busy. The end-to-end check with a real kernel
is tests/notebook/test_notebook_api.py::test_a_kernel_finds_the_jupyter_server_it_belongs_to.

And how a notebook's kernel finds its server's `home` (the cluster behind `px.train`) when
that is set in the server's config only: the server hands it to its kernels
(`app.pass_env_to_kernels`)."""

from __future__ import annotations

import json
import os
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_helpers import kernel_client, run_in_kernel

from parallalx_jupyter import client


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A URL whose server accepts connections and never answers (a stalled server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process as a kernel: its connection file in a runtime dir of its own."""
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    connection = runtime / "kernel-k1.json"
    connection.write_text("{}")
    monkeypatch.setattr(client, "kernel_connection_file", lambda: connection)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("PARALLALX_URL", "http://127.0.0.1:1/another-device")
    monkeypatch.setenv("PARALLALX_TOKEN", "t")
    real_init = client.ApiClient.__init__  # its waits for an answer (2 s, 5 s), made short
    monkeypatch.setattr(client.ApiClient, "__init__", lambda self, url, token="", timeout=30.0:
                        real_init(self, url, token, min(timeout, 0.2)))
    return runtime


def _server_info(runtime: Path, url: str, pid: int) -> None:
    (runtime / f"jpserver-{pid}.json").write_text(json.dumps({"url": url, "pid": pid,
                                                              "token": "s"}))


def test_a_silent_parent_server_is_still_the_kernels(kernel, silent_server, monkeypatch):
    _server_info(kernel, silent_server, os.getpid())
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getpid()))
    assert client.find_kernel_server() == (silent_server, "s")
    ref = client.locate_server()
    assert (ref.url, ref.found_by) == (silent_server, "kernel")


def test_a_silent_server_that_is_not_the_parent_is_not_taken(kernel, silent_server,
                                                             monkeypatch):
    _server_info(kernel, silent_server, os.getpid())
    monkeypatch.setenv("JPY_PARENT_PID", str(os.getppid()))  # another process started us
    assert client.find_kernel_server() is None
    assert client.locate_server().found_by == "PARALLALX_URL"


@pytest.mark.parametrize("url", ["notaurl", "http://[::1", "http://127.0.0.1:42237 x",
                                 "http://127.0.0.1:port"])
def test_a_garbage_url_is_server_not_found_in_one_line(url, monkeypatch):
    """What the magic (`notebook.connect(url=...)`, a kernel's PARALLALX_URL) reports: one
    line naming where the URL came from, never urllib's ValueError from the first request."""
    monkeypatch.setattr(client, "kernel_connection_file", lambda: None)
    with pytest.raises(client.ServerNotFound, match=r"^url .* is not a valid server URL .*"
                                                    r"give it as http://host:port"):
        client.locate_server(url=url)
    monkeypatch.setenv("PARALLALX_URL", url)
    with pytest.raises(client.ServerNotFound, match=r"^PARALLALX_URL .* not a valid server URL"):
        client.locate_server()


@pytest.mark.parametrize("content", ['{"token": "x"}', "[1, 2]", '{"url": null}', "{"])
def test_an_unusable_server_json_cannot_be_read(tmp_path, content):
    (tmp_path / "server.json").write_text(content)
    with pytest.raises(client.ServerNotFound, match=f"^cannot read {tmp_path}/server.json: "):
        client.locate_server(home=tmp_path)






@pytest.mark.e2e  # a Jupyter server process, its cluster and a kernel
def test_a_notebook_kernel_finds_its_servers_home_set_only_in_a_config_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue #17, item 1: the server's `home` is in its config file only (LocalDevice writes
    `c.ParallalxApp.home` into jupyter_server_config.json, nothing into the environment) and
    it serves under a base URL; a notebook's kernel (a session, as JupyterLab starts it)
    still finds that server's cluster (`main_client`, behind `px.train`), its REST API
    (`locate_server`) and, for a `!parallalx` in a cell, the CLI finds it too."""

    from parallalx_jupyter.local_device import LocalDevice

    for key in ("PARALLALX_URL", "PARALLALX_TOKEN", "PARALLALX_HOME"):
        monkeypatch.delenv(key, raising=False)
    dev = LocalDevice(home=tmp_path / "delta", name="delta", base_url="/user/someone/").start()
    kc = None
    try:
        scheduler = dev.api("POST", "cluster/start")["scheduler_address"]
        api = client.ApiClient(dev.url, dev.token, timeout=90)
        session = api.request("POST", "api/sessions", {
            "path": "train.ipynb", "type": "notebook", "name": "train.ipynb",
            "kernel": {"name": "python3"}})
        kernel_id = session["kernel"]["id"]
        kc = kernel_client(dev, kernel_id)
        out = run_in_kernel(kc, textwrap.dedent("""
            import json, subprocess, sys
            from parallalx_jupyter.client import default_home, locate_server
            from parallalx_jupyter.cluster.connect import main_client
            ref = locate_server()
            c = main_client()
            cli = subprocess.run([sys.executable, "-m", "parallalx_jupyter.cli", "--json",
                                  "device"], capture_output=True, text=True, timeout=60)
            print(json.dumps({"home": str(default_home()), "url": ref.url,
                              "scheduler": c.scheduler.address,
                              "cli": json.loads(cli.stdout or "{}").get("name")}))
            c.close()
        """))
        found = json.loads(out.strip().splitlines()[-1])
        assert found == {"home": str(dev.home / "state"), "url": dev.url + "/",
                         "scheduler": scheduler, "cli": "delta"}
    finally:
        if kc is not None:
            kc.stop_channels()
        dev.stop()
