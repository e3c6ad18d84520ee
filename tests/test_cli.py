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


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with no PARALLALX_* of this process's environment, `env` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    return subprocess.run([*CLI_CMD, *args], capture_output=True, text=True, timeout=60,
                          env={**clean, **(env or {})})


@pytest.mark.parametrize(("argv", "env", "says"), [
    (["--url", "notaurl", "devices"], {},
     "--url 'notaurl' is not a valid server URL (no http:// or https:// scheme and host)"),
    (["--url", "http://[::1", "devices"], {}, "--url 'http://[::1' is not a valid server URL"),
    (["devices", "--url", "http://127.0.0.1:42237 x"], {},
     "--url 'http://127.0.0.1:42237 x' is not a valid server URL (it holds a space"),
    (["devices"], {"PARALLALX_URL": "127.0.0.1:8888"},
     "PARALLALX_URL '127.0.0.1:8888' is not a valid server URL"),
])
def test_a_garbage_server_url_is_one_line(argv, env, says):
    proc = _cli(*argv, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith(f"parallalx: error: {says}"), proc.stderr
    assert proc.stderr.count("\n") == 1 and "http://host:port" in proc.stderr


@pytest.mark.parametrize("content", ['{"token": "x"}', "[1, 2]", '{"url": 5}', "not json"])
def test_an_unusable_server_json_is_one_line(tmp_path, content):
    (tmp_path / "server.json").write_text(content)
    proc = _cli("--home", str(tmp_path), "devices")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"parallalx: error: cannot read {tmp_path}/server.json: ")


@pytest.mark.parametrize(("argv", "says"), [
    (["--timeout", "inf", "devices"], "parallalx: error: argument --timeout: must be a positive "
                                      "number of seconds, not 'inf'"),
    (["--timeout", "0", "devices"], "parallalx: error: argument --timeout: must be a positive "
                                    "number of seconds, not '0'"),
    (["devices", "--timeout", "nan"], "parallalx devices: error: argument --timeout: must be a "
                                      "positive number of seconds, not 'nan'"),
    (["devices", "--timeout=-1"], "parallalx devices: error: argument --timeout: must be a "
                                  "positive number of seconds, not '-1'"),
    (["invite", "https://127.0.0.1:1", "--memory-limit-gb", "nan"],
     "parallalx invite: error: argument --memory-limit-gb: must be a finite number, not 'nan'"),
    (["invite", "https://127.0.0.1:1", "--duration-hours", "inf"],
     "parallalx invite: error: argument --duration-hours: must be a finite number, not 'inf'"),
    (["env", "check", "-r", "!!bad"],
     "parallalx env: error: argument -r/--requirement: not a valid requirement '!!bad': "
     "Expected package name at the start of dependency specifier (e.g. torch>=2.1)"),
    (["--home", "", "devices"], "parallalx: error: argument --home: must not be empty"),
    (["devices", "--url", ""], "parallalx devices: error: argument --url: must not be empty"),
])
def test_bad_option_values_are_one_usage_line(argv, says):
    proc = _cli(*argv, env={"PARALLALX_URL": "http://127.0.0.1:1"})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1] == says
    assert "Traceback" not in proc.stderr


def test_cli_mistakes_against_a_real_device_are_one_line(make_device):
    a = make_device("alpha")
    # a 403 with no token given says that a token is due (with --url, and PARALLALX_URL)
    hint = "; no token was given: pass --token or set PARALLALX_TOKEN"
    for argv, env in (([f"--url={a.url}", "devices"], {}), (["devices"], {"PARALLALX_URL": a.url})):
        proc = _cli(*argv, env=env)
        assert proc.returncode == 1 and "403" in proc.stderr, proc.stderr
        assert proc.stderr.rstrip().endswith(hint) and proc.stderr.count("\n") == 1
    rc, out, err = run_cli(a, "--url", a.url, "--token", "wrong", "devices", home=False)
    assert rc == 1 and "403" in err and "no token was given" not in err
    # `jobs list` takes no job ID, as every other command refuses extras
    rc, out, err = run_cli(a, "jobs", "list", "extra")
    assert rc == 1 and err.startswith("parallalx: error: jobs list: takes no job ID"), err
    # options between the workload and its parameters, as before the workload
    for argv in (["run", "launch", "--name", "x", "fn=.foo:x"],
                 ["run", "--name", "x", "launch", "fn=.foo:x"]):
        rc, out, err = run_cli(a, *argv)
        assert rc == 1 and "launch: parameter 'fn': cannot import '.foo:x'" in err, err
    rc, out, err = run_cli(a, "run", "launch", "--name", "x", "fn=.foo:x", "--bogus")
    assert rc == 2 and err.strip().splitlines()[-1] == (
        "parallalx: error: unrecognized arguments: --bogus")
    rc, out, err = run_cli(a, "run", "launch", "--params-json", "{bad")
    assert rc == 1 and err.startswith("parallalx: error: --params-json is not valid JSON: "), err
    # a tls:// scheduler that is not this device's own: refused at once, no minute-long hang
    started = time.monotonic()
    rc, out, err = run_cli(a, "run", "launch", "fn=json:dumps", "--scheduler",
                           "tls://127.0.0.1:1")
    assert rc == 1 and err.startswith(
        "parallalx: error: --scheduler tls://127.0.0.1:1: a tls:// scheduler needs credentials"
    ) and err.count("\n") == 1, err
    assert time.monotonic() - started < 30


def test_a_tls_scheduler_of_this_device_is_driven_with_its_credentials(make_device):
    """`--scheduler` with the address `parallalx cluster` prints: this device's credentials."""
    a = make_device("alpha")
    address = a.api("POST", "cluster/start")["scheduler_address"]
    code = ("import argparse; from parallalx_jupyter import cli; "
            f"c = cli._run_client(argparse.Namespace(scheduler={address!r}, "
            f"home={str(a.home / 'state')!r})); print(c.scheduler.address); c.close()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == address, proc.stderr[-2000:]


def test_asks_that_hold_an_object_print_as_words_not_a_python_dict():
    args = argparse.Namespace(all=False, direction="outgoing")
    sent = {"id": "r1", "direction": "outgoing", "kind": "offer", "state": "pending",
            "peer": {"name": "bravo", "id_display": "B"}, "code": "123456",
            "asks": {"purpose": "demo", "nthreads": 2,
                     "cluster": {"scheduler_port": 34489, "ca_fingerprint": "ab12"}},
            "expires_at": time.time() + 600}
    api = ApiClient("http://127.0.0.1:1")
    for name in ("invite", "accept", "requests"):
        shown = COMMANDS[name].show(Invocation(name, api, args, CLI),
                                    [sent] if name == "requests" else sent)
        [asks] = [line for line in shown.splitlines() if line.startswith("  asks:")]
        assert asks.split(None, 1)[1] == (
            "demo, threads 2, cluster (scheduler port 34489, ca fingerprint ab12)"), shown
