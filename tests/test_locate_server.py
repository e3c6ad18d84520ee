"""How a kernel picks its device when its own Jupyter server is slow to answer: a server that
gives no answer in time is not ruled out, so the kernel never moves to the device named in its
environment (`PARALLALX_URL`) because its own is busy. The end-to-end check with a real kernel
is tests/notebook/test_notebook_api.py::test_a_kernel_finds_the_jupyter_server_it_belongs_to."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

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
