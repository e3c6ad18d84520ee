"""The `parallalx` command against real device processes."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest

from parallalx_jupyter import cli
from parallalx_jupyter.client import ApiClient
from parallalx_jupyter.commands import CLI, COMMANDS, Invocation, readable
from parallalx_jupyter.local_device import wait_for

CLI_CMD = [sys.executable, "-m", "parallalx_jupyter.cli"]


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

    # `invite --wait`: the request and its code at once, then the other side's decision
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    inviting = subprocess.Popen(
        [*CLI_CMD, "invite", b.peer_url, "--purpose", "demo", "--nthreads", "2", "--wait",
         "--home", str(a.home / "state")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env)
    try:
        shown = []
        while not any(line.startswith("  code:") for line in shown):
            line = inviting.stdout.readline()
            assert line, inviting.stderr.read()
            shown.append(line)
        request_id = next(x.split()[1] for x in shown if x.startswith("  request:"))
        rc, out, err = run_cli(a, "--json", "requests", "--direction", "outgoing")
        [sent] = json.loads(out)
        assert sent["id"] == request_id and sent["asks"]["nthreads"] == 2

        rc, out, err = run_cli(b, "requests")
        assert rc == 0 and sent["id"] in out and "alpha" in out
        assert f"{sent['code'][:3]} {sent['code'][3:]}" in out
        assert inviting.poll() is None  # still waiting for bravo's user

        rc, out, err = run_cli(b, "accept", sent["id"])
        assert rc == 0 and "accepted" in out
        rest, waited = inviting.communicate(timeout=30)
    finally:
        if inviting.poll() is None:
            inviting.kill()
    assert inviting.returncode == 0, waited
    assert rest.strip().splitlines()[-1] == "the other device's user decided: accepted"
    assert "Ctrl-C stops waiting" in waited
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
    # an ID that starts with "-" is an ID (issue #17, item 4): the server is asked about it
    for args in (["accept", "-xAQdQ1ZkBcE3tXyz"], ["accept", "--", "-xAQdQ1ZkBcE3tXyz"],
                 ["reject", "-xAQdQ1ZkBcE3tXyz", "--reason", "no"]):
        rc, out, err = run_cli(a, *args)
        assert rc == 1 and "no request with ID '-xAQdQ1ZkBcE3tXyz'" in err and "404" in err, err
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
    # the global options after the command too
    rc, out, err = run_cli(a, "device", "--url", a.url, "--token", a.token, "--json",
                           home=False)
    assert rc == 0 and json.loads(out)["name"] == "alpha", err
    rc, out, err = run_cli(a, "device", "--json", "--home", str(a.home / "state"), home=False)
    assert rc == 0 and json.loads(out)["name"] == "alpha", err
    # an explicit --home means that device, even where PARALLALX_URL names another server
    # (a `!parallalx --home ...` in a notebook, whose kernel has its own server's URL)
    env = {"PARALLALX_URL": "http://127.0.0.1:1/another", "PARALLALX_TOKEN": "t",
           **{k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}}
    proc = subprocess.run([*CLI_CMD, "--home", str(a.home / "state"), "--json", "device"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["name"] == "alpha", proc.stderr
    # `parallalx jobs | head`: a reader that leaves early gets no BrokenPipeError
    proc = _into_closed_pipe([*CLI_CMD, "--home", str(a.home / "state"), "jobs"])
    assert proc.returncode == cli.EXIT_BROKEN_PIPE and proc.stderr == "", proc.stderr


def test_cli_cluster_start_show_stop(make_device):
    a = make_device("alpha", env={"PARALLALX_MAIN_DEVICE_TRAINS": ""})  # its own worker too
    rc, out, err = run_cli(a, "cluster")
    assert rc == 0 and "(not running)" in out
    rc, out, err = run_cli(a, "cluster", "start")
    assert rc == 0 and "tls://127.0.0.1:" in out, err
    # the workers by device name and the ID `devices` shows, never a worker's address
    wait_for(lambda: a.api("GET", "cluster")["workers"], 60, 0.2)
    me = a.api("GET", "device")
    rc, out, err = run_cli(a, "cluster")
    [row] = [line for line in out.splitlines() if line.startswith("alpha (this device)")]
    assert row.split()[3:5] == [me["id_display"][:15] + "…", "1"], out
    assert [line for line in out.splitlines() if "tls://" in line] == [
        f"scheduler:  {a.api('GET', 'cluster')['scheduler_address']}"]
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


def _into_closed_pipe(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `cmd` with stdout a pipe whose reader has already gone (`... | head` once head has
    read its lines)."""
    read, write = os.pipe()
    os.close(read)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
        proc = subprocess.run(cmd, stdout=write, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=env)
    finally:
        os.close(write)
    return proc


def _actions(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    for action in parser._actions:
        yield path, action
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, (*path, name))


def test_every_option_and_argument_has_help():
    missing = [f"{' '.join(path) or 'parallalx'} {'/'.join(a.option_strings) or a.dest}"
               for path, a in _actions(cli.build_parser()) if not a.help]
    assert missing == []


@pytest.mark.parametrize(("argv", "expected"), [
    (["accept", "-xAQdQ1ZkBcE3tXyz"], {"request_id": "-xAQdQ1ZkBcE3tXyz"}),
    (["accept", "-xAQdQ1ZkBcE3tXyz", "--kernel", "py", "--json"],
     {"request_id": "-xAQdQ1ZkBcE3tXyz", "kernel": "py", "json": True}),
    (["accept", "--", "-xAQdQ1ZkBcE3tXyz"], {"request_id": "-xAQdQ1ZkBcE3tXyz"}),
    (["reject", "-hXQ", "--reason", "-5"], {"request_id": "-hXQ", "reason": "-5"}),
    (["--home", "accept", "accept", "-x"], {"home": "accept", "request_id": "-x"}),
    (["jobs", "cancel", "-j0b", "--json"], {"action": "cancel", "job": "-j0b", "json": True}),
    # what only looks like an ID is left alone: options, their values, `-r` with its value
    (["cluster", "add-self", "--nthreads", "-1"], {"action": "add-self", "nthreads": -1}),
    (["env", "check", "-rsix"], {"action": "check", "requirements": ["six"]}),
    (["accept", "ID", "--kern", "py"], {"request_id": "ID", "kernel": "py"}),
    # a command that passes arguments on (a script's) keeps them as written
    (["launch", "train.py", "--name", "n", "-v"],
     {"script": "train.py", "script_args": ["--name", "n", "-v"]}),
])
def test_ids_that_look_like_options_are_read_as_ids(argv, expected):
    parser = cli.build_parser()
    args = parser.parse_args(cli.protect_dash_arguments(parser, argv))
    assert {k: getattr(args, k) for k in expected} == expected


def test_no_command_prints_a_python_dict():
    """Every CLI command of the table has text of its own or a handler that makes some; what
    has none (and a workload's summary) prints as readable lines."""
    assert [c.name for c in COMMANDS.values()
            if CLI in c.surfaces and c.text is None and c.name not in cli.HANDLERS] == []
    summary = {"job": "j1", "workload": "sweep", "best_params": {"lr": 0.0123, "momentum": 0.9},
               "trials": {"COMPLETE": 20, "PRUNED": 10}, "tags": ["a", "b"], "best_model": None}
    assert readable(summary) == "\n".join([
        "job: j1", "workload: sweep", "best_params:", "  lr: 0.0123", "  momentum: 0.9",
        "trials:", "  COMPLETE: 20", "  PRUNED: 10", "tags: a, b", "best_model: -"])
    assert "{" not in readable([{"id": "x", "asks": {"gpus": 1}}, {"id": "y"}])


def test_invite_says_what_happens_next_instead_of_waiting_and_exiting():
    args = argparse.Namespace()
    sent = {"id": "r1", "direction": "outgoing", "kind": "invite", "state": "pending",
            "peer": {"name": "bravo", "id_display": "B"}, "asks": {}, "code": "123456",
            "expires_at": time.time() + 600}
    shown = COMMANDS["invite"].show(Invocation("invite", ApiClient("http://127.0.0.1:1"), args,
                                               CLI), sent)
    assert "Waiting" not in shown
    assert shown.splitlines()[-1].startswith("Next: the other device's user compares this code")
    assert "`parallalx requests --direction outgoing`" in shown and "--wait" in shown
