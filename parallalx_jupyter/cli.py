"""`parallalx`: the command line for headless devices and scripts.

It speaks to the local Jupyter server's REST API, exactly like the panel, widgets and magics, so
no behaviour lives only here: its commands come from the command table (`commands`), which the
`%parallalx` magic is built from too. The server is found from `--url`/`--token`, the environment
(`PARALLALX_URL`, `PARALLALX_TOKEN`) or the `server.json` the extension writes into its home;
these options, `--json` and `--timeout` go before or after the command; an explicit `--home`
wins over `PARALLALX_URL` (a notebook's `!parallalx --home OTHER ...` means that other device).

An ID may start with "-" (request IDs made before they were kept from doing so): `accept -- ID`
works as in every argparse program, and a lone argument that only looks like an option
(`accept -xAQ...`: no option of the command is spelt like it) is taken as the ID
(`protect_dash_arguments`). Output piped into `head` that stops reading ends the command
quietly (exit status 141, as for SIGPIPE), without a BrokenPipeError traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import ApiClient, ClientError, ServerNotFound, find_server
from .commands import CLI, COMMANDS, Command, CommandError, Invocation, readable

EXIT_API = 1
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader left


class CliError(Exception):
    pass


def _rest(command: Command) -> Callable[[argparse.Namespace], Any]:
    """Run a table command: its REST call, then its text (or the JSON with `--json`)."""

    def run(args: argparse.Namespace) -> Any:
        url, token = args.server
        inv = Invocation(command.name, ApiClient(url, token, timeout=args.timeout), args, CLI)
        data = command.call(inv)  # type: ignore[misc]
        return data if args.json else command.show(inv, data)

    return run


def cmd_run(args: argparse.Namespace) -> Any:
    """Run a workload in this process (it owns the job), listed by the device's server."""
    from .workloads import WorkloadError
    from .workloads.base import require_references
    from .workloads.params import parse_params
    from .workloads.registry import get
    from .workloads.runner import start

    os.environ["PARALLALX_JOB_OWNER"] = "cli"
    try:
        workload = get(args.workload)
        params = parse_params(args.params, args.params_json)
        require_references(workload.name, workload.parameters, params)
        params = workload.validate(params)
        url, token = args.server
        job = start(workload, params, client=_run_client(args), name=args.name,
                    report=ApiClient(url, token, timeout=10), job_id=args.job_id,
                    adopt=args.job_id is not None)
    except (WorkloadError, CommandError) as err:  # CommandError: `_run_client` refused
        raise CliError(str(err)) from None
    except Exception as err:  # no cluster, cannot connect: one line
        raise CliError(f"{args.workload}: {type(err).__name__}: {err}") from None
    return follow_job(args, workload, job)


def _print_output(rec: dict[str, Any]) -> None:
    """What a rank printed, as torchrun's terminal shows it: its stream, each line after the
    rank (and the device) it came from."""
    from .jobs.handle import output_prefix

    prefix = output_prefix(int(rec.get("rank", 0)), str(rec.get("device", "")))
    stream = sys.stderr if rec.get("stream") == "stderr" else sys.stdout
    stream.write("".join(f"{prefix}{line}\n" for line in str(rec.get("text", "")).splitlines()))
    stream.flush()


def follow_job(args: argparse.Namespace, workload: Any, job: Any) -> Any:
    """Show a job this process owns until it ends (progress on stderr); its summary."""
    unsubscribe = None
    if not args.json:
        print(f"{workload.name} job {job.id} started; `parallalx jobs cancel {job.id}` or "
              "Ctrl-C stops it", file=sys.stderr)
        unsubscribe = job.subscribe(_print_output, {"output"})
    last = ""
    try:
        while not job.done():
            time.sleep(0.5)
            line = _progress_line(job)
            if line != last and not args.json:
                print(line, file=sys.stderr)
                last = line
    except KeyboardInterrupt:
        job.cancel()
        print("cancelling ...", file=sys.stderr)
    finally:
        if unsubscribe is not None:
            unsubscribe()
    try:
        result = job.result()
    except Exception as err:
        raise CliError(f"{workload.name} job {job.id} {job.state}: {err}") from None
    summary = {"job": job.id, "workload": workload.name, "state": job.state,
               **workload.summarize(result)}
    if args.json:
        return summary
    return readable(summary)


def cmd_invite(args: argparse.Namespace) -> Any:
    """`invite`: send the request and print it (its verification code is what the other
    device's user compares); with `--wait`, then wait for their decision (until the request
    expires; Ctrl-C stops waiting and leaves the request open)."""
    command = COMMANDS["invite"]
    url, token = args.server
    api = ApiClient(url, token, timeout=args.timeout)
    inv = Invocation(command.name, api, args, CLI)
    sent = command.call(inv)  # type: ignore[misc]
    if not args.wait:
        return sent if args.json else command.show(inv, sent)
    if not args.json:
        print(command.show(inv, sent), flush=True)
        print("Waiting for the other device's user to decide (Ctrl-C stops waiting; the "
              "request stays open) ...", file=sys.stderr, flush=True)
    try:
        decided = wait_for_decision(api, str(sent["id"]), sent.get("expires_at"))
    except KeyboardInterrupt:
        raise CliError(f"stopped waiting; request {sent['id']} is still open (`parallalx "
                       "requests --direction outgoing` shows its answer later)") from None
    if args.json:
        return decided
    state = str(decided.get("state"))
    if state == "pending":  # the other device did not answer before the request expired
        return f"no decision before the request expired (state: {state})"
    return f"the other device's user decided: {state}"


def wait_for_decision(api: ApiClient, request_id: str, expires_at: Any,
                      interval: float = 1.0) -> dict[str, Any]:
    """Poll our outgoing request until it is no longer pending or it has expired (plus a few
    seconds for the other side's answer to arrive); the last view of it."""
    deadline = (float(expires_at) if isinstance(expires_at, int | float) else time.time() + 600)
    while True:
        request = api.get_request(request_id)
        if request.get("state") != "pending" or time.time() > deadline + 5:
            return request
        time.sleep(interval)


def _run_client(args: argparse.Namespace) -> Any:
    """The cluster a `run` or `launch` job goes to: `--scheduler`, else this device's own.

    A `tls://` scheduler needs a client certificate: this device's own scheduler (the address
    `parallalx cluster` prints) is driven with this device's credentials; any other only with
    credentials in Dask's config, since without them Dask fails in a TypeError and then hangs
    for a minute on its way out."""
    from .cluster.connect import main_client

    home = Path(args.home).expanduser() if args.home else None
    if not args.scheduler:
        return main_client(home)
    if not args.scheduler.startswith("tls://"):
        return args.scheduler
    from distributed.security import Security

    if Security().get_connection_args("client").get("ssl_context") is not None:
        return args.scheduler  # Dask's config has the credentials
    if args.scheduler == _own_scheduler(home):
        return main_client(home)
    raise CommandError(
        f"--scheduler {args.scheduler}: a tls:// scheduler needs credentials, and that is not "
        "this device's own scheduler: leave --scheduler out to run on this device's cluster "
        "(or set Dask's distributed.comm.tls options)")


def _own_scheduler(home: Path | None) -> str | None:
    """The address this device's scheduler runs at (its `scheduler-state.json`), if any."""
    from .client import default_home

    try:
        state = json.loads(((home or default_home()) / "cluster" / "scheduler-state.json")
                           .read_text())
    except (OSError, ValueError):
        return None
    return state.get("address") if isinstance(state, dict) else None


def _progress_line(job: Any) -> str:
    from .jobs.reporter import summarize
    from .text import plain, progress_text

    if job.state == "recovering":  # the lost group's speed and ETA would only mislead
        return f"  recovering: {plain(job.state_message or 'a device was lost', 300)}"
    line = progress_text(summarize(job.progress)) if job.progress else ""
    return f"  {job.state}: {line}" if line else f"  {job.state}"


def _demo_devices(text: str) -> int:
    """``--devices``, checked by argparse so a bad value is one usage line, not a traceback."""
    from .demo import check_device_count

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    try:
        return check_device_count(n)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _demo_workdir(text: str) -> str:
    """``--workdir``, checked by argparse: a file there is one usage line, not a traceback."""
    from .demo import check_workdir

    try:
        return check_workdir(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def cmd_demo(args: argparse.Namespace) -> Any:
    from .demo import run_demo

    return run_demo(devices=args.devices, workdir=args.workdir, as_json=args.json)


#: the CLI's own implementation of table commands that are not one REST call
HANDLERS: dict[str, Callable[[argparse.Namespace], Any]] = {"run": cmd_run,
                                                             "invite": cmd_invite}


def cmd_launch(args: argparse.Namespace) -> Any:
    """`launch`: a script on every worker (``cli_launch``)."""
    from .cli_launch import launch_script

    # this module's own helpers: run as `python -m parallalx_jupyter.cli` it is `__main__`
    return launch_script(args, follow=follow_job, client_for=_run_client)


HANDLERS["launch"] = cmd_launch


def _add_global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """`--url`, `--token`, `--home`, `--json`, `--timeout`: on the main parser with their
    defaults, and on every command's parser without (so that they may follow the command and
    do not reset a value given before it)."""

    group = parser if defaults else parser.add_argument_group(
        "global options (also accepted before the command)")

    def option(*flags: str, default: Any = None, **kwargs: Any) -> None:
        group.add_argument(*flags, default=default if defaults else argparse.SUPPRESS, **kwargs)

    option("--url", type=_not_empty, help="Jupyter server URL (default: from --home's server.json)")
    option("--token", help="Jupyter server token")
    option("--home", type=_not_empty, help="device state dir (env PARALLALX_HOME)")
    option("--json", action="store_true", default=False, help="print JSON")
    option("--timeout", type=_timeout, default=30.0, help="seconds per API call")


def _not_empty(text: str) -> str:
    """`--url ""` or `--home ""` (an unset shell variable) must not quietly mean the default
    server or home."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _timeout(text: str) -> float:
    """Seconds per API call: 0, a negative or NaN would be blamed on the server, and `inf`
    overflows the socket's timeout."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parallalx", description="Pool your computers into one PyTorch training cluster."
    )
    _add_global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (`parallalx COMMAND --help` for its options)")
    for command in COMMANDS.values():
        if CLI not in command.surfaces:
            continue
        p = sub.add_parser(command.name, help=command.help_for(CLI),
                           description=command.description_for(CLI))
        for flags, options in command.arguments(CLI):
            p.add_argument(*flags, **options)
        _add_global_options(p, defaults=False)
        p.set_defaults(func=HANDLERS.get(command.name) or _rest(command))

    # the CLI's own: starts devices on this machine, no server to talk to
    p = sub.add_parser("demo", help="the local multi-device demo (starts its own devices)")
    p.add_argument("--devices", type=_demo_devices, default=3,
                   help="how many devices to start, the main one included (2-8, default 3)")
    p.add_argument("--workdir", type=_demo_workdir,
                   help="where the demo devices keep their state")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p.set_defaults(func=cmd_demo)
    return parser


_ID_LIKE = re.compile(r"-[A-Za-z0-9_-]{1,63}")


def _takes_value(action: argparse.Action) -> bool:
    return action.nargs != 0 and not isinstance(
        action, (argparse._StoreConstAction, argparse._HelpAction, argparse._VersionAction))


def _option(options: dict[str, argparse.Action], token: str) -> argparse.Action | None:
    """The option `token` names: spelt out, or (argparse's abbreviations) the one long option
    that starts with it."""
    name = token.split("=", 1)[0]
    if name in options:
        return options[name]
    short = options.get(token[:2]) if len(token) > 2 and token[1] != "-" else None
    if short is not None and _takes_value(short):
        return short  # `-rsix`: `-r six`
    if name.startswith("--"):
        matches = {a for o, a in options.items() if o.startswith(name)}
        if len(matches) == 1:
            return matches.pop()
    return None


def protect_dash_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`argv` with every argument after the command that only looks like an option (an ID
    such as `-xAQ...`: spelt like no option of that command, nor the start of one, and not
    the value of the option before it) moved behind `--`, where argparse takes it as a
    positional. Without this `parallalx accept -xAQ...` says the request ID is missing."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    index = None
    for i, token in enumerate(argv):
        previous = _option(parser._option_string_actions, argv[i - 1]) if i else None
        if previous is not None and _takes_value(previous) and "=" not in argv[i - 1]:
            continue  # `--home device`: a value, not the command
        if sub is not None and token in sub.choices:
            index = i
            break
    if sub is None or index is None:
        return argv
    command = sub.choices[argv[index]]
    if any(not a.option_strings and a.nargs in (argparse.REMAINDER, "*", "+")
           for a in command._actions):
        return argv  # `launch SCRIPT ARGS...`, `run NAME key=value...`: theirs as written
    options = command._option_string_actions
    head, rest = argv[: index + 1], argv[index + 1:]
    tail = rest[rest.index("--") + 1:] if "--" in rest else []
    rest = rest[: rest.index("--")] if "--" in rest else rest
    options_kept: list[str] = []  # options and their values, in order
    positionals: list[str] = []  # the command's positional arguments, in order
    moved = False
    for i, token in enumerate(rest):
        previous = _option(options, rest[i - 1]) if i else None
        if previous is not None and _takes_value(previous) and "=" not in rest[i - 1]:
            options_kept.append(token)  # the value of the option before it (`--nthreads -1`)
        elif _ID_LIKE.fullmatch(token) and _option(options, token) is None:
            positionals.append(token)
            moved = True
        elif token.startswith("-") and token != "-":
            options_kept.append(token)
        else:
            positionals.append(token)
    if not moved:
        return argv
    # every positional behind `--`, in order: argparse fills optional positionals (`jobs
    # [action] [job]`) as soon as it meets an option, so only the ID behind it would be lost
    return [*head, *options_kept, "--", *positionals, *tail]


def _server(args: argparse.Namespace) -> tuple[str, str]:
    """The server to talk to: `--url`/`--token`; else an explicit `--home`'s server.json;
    else `PARALLALX_URL`/`PARALLALX_TOKEN` (a kernel's own server puts them there); else
    the default home's server.json."""
    if args.url:
        return find_server(url=args.url, token=args.token or os.environ.get("PARALLALX_TOKEN"),
                           source="--url")
    if args.home:
        return find_server(token=args.token, home=Path(args.home).expanduser())
    return find_server(url=os.environ.get("PARALLALX_URL"),
                       token=args.token or os.environ.get("PARALLALX_TOKEN"),
                       source="PARALLALX_URL")


def _print(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else list(argv))
    except BrokenPipeError:
        # the reader (`| head`) left: nothing more to say to it, and Python must not report
        # the failed flush of stdout at exit either
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


def _main(argv: list[str]) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(protect_dash_arguments(parser, argv))
    if args.command == "run":
        # `run train --name x model=a:b`: argparse has filled `params` (with nothing) before
        # the option, so the parameters after it come back unparsed
        args.params = [*args.params, *(x for x in extras if not x.startswith("-"))]
        extras = [x for x in extras if x.startswith("-")]
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    try:
        if args.command == "launch":  # runs without a server too (then unlisted)
            try:
                args.server = _server(args)
            except ServerNotFound:
                args.server = None
        elif args.command != "demo":
            args.server = _server(args)
        result = args.func(args)
    except (CliError, CommandError, ClientError, ServerNotFound) as err:
        hint = ""
        if isinstance(err, ClientError) and err.status == 403 and not (
                getattr(args, "server", None) or ("", ""))[1]:
            # Jupyter's "Forbidden" or "'_xsrf' argument missing" does not say a token is due
            hint = "; no token was given: pass --token or set PARALLALX_TOKEN"
        print(f"parallalx: error: {err}{hint}", file=sys.stderr)
        return EXIT_API
    except KeyboardInterrupt:
        return 130
    if args.json and not isinstance(result, str):
        _print(json.dumps(result, indent=2))
    elif isinstance(result, str):
        _print(result)
    elif result is not None:  # never a Python repr: readable lines
        _print(readable(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
