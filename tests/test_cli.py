"""The `parallalx` command against real device processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from parallalx_jupyter.local_device import wait_for


def run_cli(dev, *args, home=True):
    cmd = [sys.executable, "-m", "parallalx_jupyter.cli"]
    if home:
        cmd += ["--home", str(dev.home / "state")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    proc = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, proc.stdout, proc.stderr


def test_cli_pairs_two_devices_end_to_end(make_device):
    a, b = make_device("alpha"), make_device("bravo")
    rc, out, err = run_cli(a, "device")
    assert rc == 0, err
    assert "alpha" in out and a.api("GET", "device")["id_display"] in out

    rc, out, err = run_cli(a, "--json", "invite", b.peer_url, "--purpose", "demo",
                           "--nthreads", "2")
    assert rc == 0, err
    sent = json.loads(out)
    assert sent["asks"]["nthreads"] == 2

    rc, out, err = run_cli(b, "requests")
    assert rc == 0 and sent["id"] in out and "alpha" in out
    assert f"{sent['code'][:3]} {sent['code'][3:]}" in out

    rc, out, err = run_cli(b, "accept", sent["id"])
    assert rc == 0 and "accepted" in out
    wait_for(lambda: a.api("GET", "devices"), 15)
    rc, out, err = run_cli(a, "devices")
    assert rc == 0 and "bravo" in out and "worker" in out and "paired" in out

    rc, out, err = run_cli(a, "revoke", "bravo")
    assert rc == 0 and "revoked bravo" in out


def test_cli_errors_are_one_readable_line(make_device, tmp_path):
    a = make_device("alpha")
    rc, out, err = run_cli(a, "accept", "no-such-request")
    assert rc == 1 and err.startswith("parallalx: error:") and "404" in err
    assert "Traceback" not in err
    rc, out, err = run_cli(a, "invite", "http://127.0.0.1:1")
    assert rc == 1 and "https" in err
    rc, out, err = run_cli(a, "revoke", "nobody")
    assert rc == 1 and "no paired device" in err
    rc, out, err = run_cli(a, "reject", " ")
    assert rc == 1 and err.strip() == (
        "parallalx: error: reject: the request ID is empty (`parallalx requests` lists them)"
    )
    cmd = [sys.executable, "-m", "parallalx_jupyter.cli", "--home", str(tmp_path / "none"),
           "devices"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no running Jupyter server" in proc.stderr


def test_cli_url_and_token_select_the_server(make_device):
    a = make_device("alpha")
    rc, out, err = run_cli(a, "--url", a.url, "--token", a.token, "--json", "device", home=False)
    assert rc == 0 and json.loads(out)["name"] == "alpha"
    rc, out, err = run_cli(a, "--url", a.url, "--token", "wrong", "device", home=False)
    assert rc == 1 and "403" in err


def test_cli_cluster_start_show_stop(make_device):
    a = make_device("alpha")
    rc, out, err = run_cli(a, "cluster")
    assert rc == 0 and "(not running)" in out
    rc, out, err = run_cli(a, "cluster", "start")
    assert rc == 0 and "tls://127.0.0.1:" in out, err
    rc, out, err = run_cli(a, "--json", "cluster")
    assert rc == 0 and json.loads(out)["running"] is True
    rc, out, err = run_cli(a, "cluster", "stop")
    assert rc == 0 and "(not running)" in out


def test_cli_kernels_ides_and_env_check(make_device):
    a = make_device("alpha")
    rc, out, err = run_cli(a, "kernels")
    assert rc == 0 and "python3" in out, err
    rc, out, err = run_cli(a, "ides")
    assert rc == 0 and "jupyterlab" in out
    rc, out, err = run_cli(a, "env", "check", "--kernel", "python3", "-r", "six")
    assert rc == 0 and "torch" in out and "six" in out
    rc, out, err = run_cli(a, "env", "check", "--kernel", "nope")
    assert rc == 1 and "no kernel named" in err
