"""`%parallalx` / `%%parallalx` in a real IPython shell against real device processes."""

from __future__ import annotations

import json

from IPython.core.error import UsageError

from parallalx_jupyter.local_device import wait_for
from parallalx_jupyter.notebook.magics import SUBCOMMANDS
from parallalx_jupyter.notebook.widgets import DeviceTable, Inbox, Overview, RequestCard, StatusView


def run(ip, capsys, source):
    """Run one cell: (result, stdout, stderr)."""
    capsys.readouterr()
    result = ip.run_cell(source)
    out, err = capsys.readouterr()
    return result, out, err


def assert_one_line_error(result, err, *needles):
    assert isinstance(result.error_in_exec, UsageError), (result.error_in_exec, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("UsageError: parallalx: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def code_of(request):
    return f"{request['code'][:3]} {request['code'][3:]}"


def test_help_for_the_magic_and_every_subcommand(ip, capsys):
    assert "parallalx" in ip.magics_manager.magics["line"]
    assert "parallalx" in ip.magics_manager.magics["cell"]
    result, out, _ = run(ip, capsys, "%parallalx --help")
    assert result.success
    for name in ("status", "devices", "requests", "invite", "accept", "reject", "revoke"):
        assert f"  {name} " in out
    for name in SUBCOMMANDS:
        result, out, err = run(ip, capsys, f"%parallalx {name} --help")
        assert result.success, err
        assert out.startswith(f"usage: %parallalx {name}")
        assert "--json" in out and "-o VAR" in out
    result, _, err = run(ip, capsys, "%parallalx frobnicate --json")
    assert_one_line_error(result, err, "unknown subcommand 'frobnicate'")


def test_status_shows_this_device_and_captures_json(ip, capsys, alpha):
    ip.use(alpha)
    result, out, err = run(ip, capsys, "%parallalx status -o st")
    assert result.success, err
    assert "this device: alpha" in out and "found by: argument" in out
    st = ip.user_ns["st"]
    assert st["device"]["name"] == "alpha" and st["server"]["url"].startswith(alpha.url)
    assert isinstance(ip.shown[-1], StatusView)
    assert alpha.token not in json.dumps(st)
    result, out, err = run(ip, capsys, "%parallalx status --json")
    assert result.success, err
    assert json.loads(out)["device"]["id"] == st["device"]["id"]


def test_status_without_a_server_or_with_a_bad_token_is_one_line(ip, capsys, alpha, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setenv("PARALLALX_HOME", str(tmp_path / "nowhere"))
    result, _, err = run(ip, capsys, "%parallalx status")
    assert_one_line_error(result, err, "no running Jupyter server", "PARALLALX_URL")
    result, _, err = run(ip, capsys, "%parallalx")
    assert_one_line_error(result, err, "no running Jupyter server")
    from parallalx_jupyter.notebook import api

    api.connect(url=alpha.url, token="wrong")
    result, _, err = run(ip, capsys, "%parallalx devices")
    assert_one_line_error(result, err, "(HTTP 403)")


def test_invite_requests_accept_devices_revoke(ip, capsys, alpha, bravo):
    ip.use(alpha)
    result, out, err = run(
        ip, capsys,
        f'%parallalx invite {bravo.peer_url} --purpose "notebook test" --nthreads 2 -o sent',
    )
    assert result.success, err
    sent = ip.user_ns["sent"]
    assert sent["state"] == "pending" and sent["asks"]["nthreads"] == 2
    assert sent["asks"]["purpose"] == "notebook test"  # shell-style quotes, not kept
    assert code_of(sent) in out and "bravo" in out
    shown = ip.shown[-1]
    assert isinstance(shown, Inbox) and list(shown.cards) == [sent["id"]]

    ip.use(bravo)
    result, out, err = run(ip, capsys, "%parallalx requests --direction incoming -o reqs")
    assert result.success, err
    assert sent["id"] in [r["id"] for r in ip.user_ns["reqs"]]
    assert code_of(sent) in out and "alpha" in out and "notebook test" in out
    card = ip.shown[-1].card(sent["id"])
    assert card.actionable and card.buttons.layout.display != "none"

    result, out, err = run(ip, capsys, f"%parallalx accept {sent['id']}")
    assert result.success, err
    assert isinstance(ip.shown[-1], RequestCard) and ": accepted" in out
    wait_for(lambda: alpha.api("GET", f"requests/{sent['id']}")["state"] == "accepted", 15)

    result, out, err = run(ip, capsys, "%parallalx devices -o devs")
    assert result.success, err
    assert isinstance(ip.shown[-1], DeviceTable)
    assert any(d["name"] == "alpha" and d["state"] == "paired" for d in ip.user_ns["devs"])
    assert "alpha" in out and "paired" in out

    result, out, err = run(ip, capsys, "%parallalx revoke alpha")
    assert result.success, err
    assert out.startswith("revoked alpha [")
    wait_for(lambda: any(d["name"] == "bravo" and d["state"] == "revoked_by_peer"
                         for d in alpha.api("GET", "devices")), 5)


def test_reject_and_bad_input_are_one_line_errors(ip, capsys, alpha, bravo):
    sent = alpha.api("POST", "invitations", {"url": bravo.peer_url})
    ip.use(bravo)
    result, out, err = run(ip, capsys, f'%parallalx reject {sent["id"]} --reason "not now" --json')
    assert result.success, err
    assert json.loads(out)["state"] == "rejected"
    wait_for(lambda: alpha.api("GET", f"requests/{sent['id']}")["state"] == "rejected", 15)

    cases = [
        ("%parallalx accept no-such-request", "no request with ID 'no-such-request' (HTTP 404)"),
        (f"%parallalx accept {sent['id']}", "request is already rejected (HTTP 409)"),
        ("%parallalx reject", "reject: the following arguments are required: request_id"),
        ("%parallalx invite http://127.0.0.1:1", "https"),
        (f"%parallalx invite {alpha.peer_url} --nthreads lots", "invalid int value: 'lots'"),
        ("%parallalx revoke nobody", "no paired device matches 'nobody'"),
        ("%parallalx devices -o 1st", "-o needs a Python variable name"),
        ("%parallalx devices extra", "unrecognized arguments: extra"),
        ('%parallalx invite https://x --purpose "unbalanced', "No closing quotation"),
        ("%%parallalx devices\nsome body", "devices takes no cell body"),
    ]
    for source, needle in cases:
        result, out, err = run(ip, capsys, source)
        assert_one_line_error(result, err, needle)
    assert "1st" not in ip.user_ns


def test_cell_magic_runs_one_subcommand_per_line_and_gives_invite_its_body(ip, capsys, alpha,
                                                                          bravo):
    ip.use(alpha)
    ip.user_ns["peer"] = bravo.peer_url
    result, out, err = run(ip, capsys, "%%parallalx\n# a comment\n\nstatus -o st\n"
                                       "invite $peer --purpose scripted -o first\n")
    assert result.success, err
    assert ip.user_ns["st"]["device"]["name"] == "alpha"
    assert ip.user_ns["first"]["asks"]["purpose"] == "scripted"

    result, out, err = run(ip, capsys, f"%%parallalx invite {bravo.peer_url} -o second\n"
                                       "purpose: from the cell body\nnthreads: 3\n"
                                       "duration-hours = 1.5  # a comment\n")
    assert result.success, err
    asks = ip.user_ns["second"]["asks"]
    assert (asks["purpose"], asks["nthreads"], asks["duration_hours"]) == (
        "from the cell body", 3, 1.5)
    incoming = bravo.api("GET", "requests?direction=incoming")
    assert ip.user_ns["second"]["id"] in [r["id"] for r in incoming]

    for body, needle in [("nthreads: many", "nthreads must be a"),  # whole number: see below
                         ("colour: red", "cannot read 'colour: red'"),
                         ('{"purpose": ', "not valid JSON")]:
        result, _, err = run(ip, capsys, f"%%parallalx invite {bravo.peer_url}\n{body}")
        assert_one_line_error(result, err, needle)

    result, out, err = run(ip, capsys, "%%parallalx\nstatus\nfrobnicate\ndevices -o never")
    assert_one_line_error(result, err, "unknown subcommand 'frobnicate'")
    assert "this device: alpha" in out and "never" not in ip.user_ns


def test_bare_magic_shows_the_live_overview(ip, capsys, bravo):
    ip.use(bravo)
    result, out, err = run(ip, capsys, "%parallalx")
    assert result.success, err
    overview = ip.shown[-1]
    assert isinstance(overview, Overview)
    assert overview.is_live and overview.inbox.is_live and overview.devices.is_live
    assert "this device: bravo" in out and "Paired devices:" in out
    assert "Connection requests:" in out
    overview.close()
    assert not overview.inbox.is_live


def test_a_failed_overview_leaves_nothing_that_complains_later(ip, capsys, alpha, monkeypatch):
    """The overview's construction fails (403, unreachable): the half-built widget is garbage,
    and collecting it must not print "Exception ignored in Widget.__del__"."""
    import gc
    import sys

    from parallalx_jupyter.notebook import api

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    api.connect(url=alpha.url, token="wrong")
    result, _, err = run(ip, capsys, "%parallalx")
    assert_one_line_error(result, err, "(HTTP 403)")
    api.connect(url="https://127.0.0.1:1", token="x")
    result, _, err = run(ip, capsys, "%parallalx")
    assert_one_line_error(result, err)
    gc.collect()
    result, _, err = run(ip, capsys, "%parallalx --help")
    gc.collect()
    assert result.success and not err, err
    assert not unraisable, [(u.exc_value, u.object) for u in unraisable]


def test_help_is_an_option_not_a_word_inside_a_quoted_value(ip, capsys, alpha, bravo):
    """`--help` inside a quoted value is data: the invite is sent; only a real -h/--help option
    (as argparse sees the shell-style words) shows the help."""
    ip.use(alpha)
    result, out, err = run(
        ip, capsys, f'%parallalx invite {bravo.peer_url} --purpose "train --help now" -o sent')
    assert result.success, err
    assert not out.startswith("usage:"), out
    assert ip.user_ns["sent"]["asks"]["purpose"] == "train --help now"
    result, out, err = run(ip, capsys, f"%parallalx invite {bravo.peer_url} --purpose=-h -o s2")
    assert result.success, err
    assert ip.user_ns["s2"]["asks"]["purpose"] == "-h"
    for line in ("invite --help", f"invite {bravo.peer_url} -h", "invite -h --purpose x",
                 "launch --help", "requests --json --help"):
        result, out, err = run(ip, capsys, f"%parallalx {line}")
        assert result.success, err
        assert out.startswith(f"usage: %parallalx {line.split()[0]}"), (line, out)


def test_job_errors_carry_their_prefix_once(ip, capsys, alpha, tmp_path):
    ip.use(alpha)
    script = tmp_path / "s.py"
    script.write_text("print('hi')\n")
    cases = [
        ("%parallalx run train model=undefined_var", "parallalx: run: parameter 'model': no "
                                                     "variable 'undefined_var'"),
        (f"%parallalx launch --max-restarts -1 {script}", "parallalx: launch: parameter "
                                                          "'max_restarts'"),
    ]
    for source, start in cases:
        result, _, err = run(ip, capsys, source)
        assert_one_line_error(result, err)
        line = err.strip()
        assert line.startswith("UsageError: " + start), line
        for doubled in ("UsageError: parallalx: run: UsageError", "run: run:",
                        "launch: launch:", "parallalx: parallalx:"):
            assert doubled not in line, line


def test_invite_body_numbers_are_whole_and_finite(ip, capsys, alpha, bravo):
    """A count must be a whole number, and NaN or infinity must be refused here naming the
    field, not sent for the server to call the body "not valid JSON"."""
    ip.use(alpha)
    cases = [
        ("gpus: 1.5", "gpus must be a whole number"),
        ("nthreads = many", "nthreads must be a whole number"),
        ("memory_limit_gb: nan", "memory_limit_gb must be a finite number"),
        ("duration-hours: inf", "duration_hours must be a finite number"),
        ('{"memory_limit_gb": NaN}', "memory_limit_gb must be a finite number"),
        ('{"gpus": 1.5}', "gpus must be a whole number"),
    ]
    for body, needle in cases:
        result, _, err = run(ip, capsys, f"%%parallalx invite {bravo.peer_url}\n{body}")
        assert_one_line_error(result, err, needle)
        assert "not valid JSON" not in err, err
