"""`parallalx`: the command line for headless devices and scripts.

It speaks to the local Jupyter server's REST API, exactly like the panel, widgets and magics, so
no behaviour lives only here: its commands come from the command table (`commands`), which the
`%parallalx` magic is built from too. The server is found from `--url`/`--token`, the environment
(`PARALLALX_URL`, `PARALLALX_TOKEN`) or the `server.json` the extension writes into its home;
these options, `--json` and `--timeout` go before or after the command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import ApiClient, ClientError, ServerNotFound, find_server
from .commands import CLI, COMMANDS, Command, CommandError, Invocation

EXIT_API = 1


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
    from .workloads.params import parse_params
    from .workloads.registry import get
    from .workloads.runner import start

    os.environ["PARALLALX_JOB_OWNER"] = "cli"
    try:
        workload = get(args.workload)
        params = workload.validate(parse_params(args.params, args.params_json))
        url, token = args.server
        job = start(workload, params, client=_run_client(args), name=args.name,
                    report=ApiClient(url, token, timeout=10), job_id=args.job_id,
                    adopt=args.job_id is not None)
    except WorkloadError as err:
        raise CliError(str(err)) from None
    except Exception as err:  # no cluster, cannot connect: one line
        raise CliError(f"{args.workload}: {type(err).__name__}: {err}") from None
    if not args.json:
        print(f"{workload.name} job {job.id} started; `parallalx jobs cancel {job.id}` or "
              "Ctrl-C stops it", file=sys.stderr)
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
    try:
        result = job.result()
    except Exception as err:
        raise CliError(f"{workload.name} job {job.id} {job.state}: {err}") from None
    summary = {"job": job.id, "workload": workload.name, "state": job.state,
               **workload.summarize(result)}
    if args.json:
        return summary
    return "\n".join(f"{k}: {v}" for k, v in summary.items())


def _run_client(args: argparse.Namespace) -> Any:
    if args.scheduler:
        return args.scheduler
    from .cluster.connect import main_client

    return main_client(Path(args.home).expanduser() if args.home else None)


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


def cmd_demo(args: argparse.Namespace) -> Any:
    from .demo import run_demo

    return run_demo(devices=args.devices, workdir=args.workdir, as_json=args.json)


#: the CLI's own implementation of table commands that are not one REST call
HANDLERS: dict[str, Callable[[argparse.Namespace], Any]] = {"run": cmd_run}


def _add_global_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """`--url`, `--token`, `--home`, `--json`, `--timeout`: on the main parser with their
    defaults, and on every command's parser without (so that they may follow the command and
    do not reset a value given before it)."""

    group = parser if defaults else parser.add_argument_group(
        "global options (also accepted before the command)")

    def option(*flags: str, default: Any = None, **kwargs: Any) -> None:
        group.add_argument(*flags, default=default if defaults else argparse.SUPPRESS, **kwargs)

    option("--url", help="Jupyter server URL (default: from --home's server.json)")
    option("--token", help="Jupyter server token")
    option("--home", help="device state dir (env PARALLALX_HOME)")
    option("--json", action="store_true", default=False, help="print JSON")
    option("--timeout", type=float, default=30.0, help="seconds per API call")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parallalx", description="Pool your computers into one PyTorch training cluster."
    )
    _add_global_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="command", required=True)
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
    p.add_argument("--workdir", help="where the demo devices keep their state")
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command != "demo":
            home = Path(args.home).expanduser() if args.home else None
            args.server = find_server(
                url=args.url or os.environ.get("PARALLALX_URL"),
                token=args.token or os.environ.get("PARALLALX_TOKEN"),
                home=home,
            )
        result = args.func(args)
    except (CliError, CommandError, ClientError, ServerNotFound) as err:
        print(f"parallalx: error: {err}", file=sys.stderr)
        return EXIT_API
    except KeyboardInterrupt:
        return 130
    if args.json and not isinstance(result, str):
        print(json.dumps(result, indent=2))
    elif result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
