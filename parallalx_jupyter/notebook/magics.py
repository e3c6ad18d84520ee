"""`%parallalx <subcommand>` and `%%parallalx`: the notebook's command line.

    %load_ext parallalx_jupyter
    %parallalx                      # live overview: this device, peers, open requests
    %parallalx status               # this device and the server the kernel talks to
    %parallalx invite https://host:8476 --purpose "train my model" -o sent
    %parallalx requests             # live inbox with Accept / Reject buttons
    %parallalx devices --json       # the REST API's JSON
    %parallalx accept REQUEST_ID    # or: reject, revoke DEVICE

    %%parallalx                     # one subcommand per line
    requests --direction incoming
    devices

    %%parallalx invite https://host:8476
    purpose: train my model         # the body: what the request asks for
    nthreads: 4

Every subcommand takes `--help`, `--json` (print the REST API's JSON) and `-o VAR` (store that
JSON data in the variable VAR). Errors are one line (`UsageError: parallalx: ...`), no traceback.

The built-in subcommands come from the command table (`parallalx_jupyter.commands`), which the
`parallalx` CLI is built from too: each command's arguments, help, REST call and text are
declared there once. Here a table command may show a live widget instead of its text
(`@shows(name)`: `devices`, `requests`, `invite`, `accept`, `reject`, `discover`) or run a
notebook implementation of its own (`@handles(name)`: `status`, `run`, `install`).

A subcommand of the notebook only (`%%parallalx train`, or a plugin's) is a few lines, anywhere
that is imported when the extension loads:

    from parallalx_jupyter.notebook.magics import Result, argument, subcommand

    @subcommand("gpus", "this device's GPUs")
    @argument("--cuda", action="store_true", help="CUDA devices only")
    def _gpus(ctx, args):
        '''List the accelerators a worker can use.'''
        data = ctx.connection.device()["profile"]["accelerators"]
        return Result(data, lambda: my_widget(data))   # or a str for plain text

`ctx.connection` is the `Connection` (REST API), `ctx.cell` the cell body (with `cell=True`).
"""

from __future__ import annotations

import argparse
import json
import keyword
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display
from IPython.utils.process import arg_split
from IPython.utils.text import DollarFormatter

from ..commands import COMMANDS, MAGIC, Command, CommandError, Invocation
from . import api
from .api import ClientError, Connection, ServerNotFound

__all__ = [
    "SUBCOMMANDS",
    "Context",
    "magic_error",
    "prefixed",
    "ParallalxMagics",
    "Result",
    "Subcommand",
    "argument",
    "handles",
    "load_ipython_extension",
    "shows",
    "subcommand",
    "unload_ipython_extension",
]


def magic_error(message: str) -> UsageError:
    """A failed subcommand, as the exception to raise. It is a plain UsageError because IPython
    shows exactly that type (not subclasses) as one line without a traceback, and still marks
    the cell as failed (so "Run all" stops there)."""
    text = " ".join(str(message).split())
    text = text.removeprefix("parallalx: ")  # an error of ours passed on: one prefix
    return UsageError("parallalx: " + (text if len(text) <= 500 else text[:499] + "…"))


def prefixed(what: str, message: Any) -> str:
    """`what: message`, unless the message already names `what` first: errors from the
    workloads and the command table carry their own prefix, so that the CLI and the API read
    the same, and adding ours again gave "launch: launch: ..."."""
    text = str(message).removeprefix("parallalx: ")
    return text if text.startswith(f"{what}: ") else f"{what}: {text}"


@dataclass
class Result:
    """What a subcommand returns. `data`: JSON-able, printed by `--json`, stored by `-o`;
    `view`: builds what is displayed otherwise (a widget or any displayable object; a str is
    printed), or None to show nothing."""

    data: Any
    view: Callable[[], Any] | None = None


@dataclass
class Context:
    shell: Any
    cell: str | None = None
    _connection: Connection | None = field(default=None, repr=False)

    @property
    def connection(self) -> Connection:
        if self._connection is None:
            self._connection = api.connect()
        return self._connection

    def invocation(self, name: str, args: Any) -> Invocation:
        """A table command's run on this kernel's connection."""
        return Invocation(name, self.connection.client, args, MAGIC, self.cell)

    def job_reporting(self) -> Any:
        """Where a job started here reports: the magics' own server, or nowhere (local job)."""
        try:
            return self.connection.client
        except (ClientError, ServerNotFound):
            return False


@dataclass
class Subcommand:
    name: str
    func: Callable[[Context, Any], Result]
    help: str
    takes_cell: bool = False

    @property
    def parser(self) -> Any:
        return self.func.parser  # type: ignore[attr-defined]

    def format_help(self) -> str:
        # IPython's formatter writes the usage as reST ("::" then "%prog ...")
        return re.sub(r"^::\s*\n\s*", "usage: ", self.parser.format_help()).rstrip()


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str, help: str, *, cell: bool = False) -> Callable[[Any], Any]:
    """Register `%parallalx <name>`: decorate `func(ctx, args) -> Result`, with its own
    `@argument(...)` decorators below this one. `--json` and `-o VAR` are added here; the
    function's docstring is its `--help` description. `cell=True`: `%%parallalx <name>` passes
    the cell body as `ctx.cell`."""

    def register(func: Any) -> Any:
        func = argument("-o", "--output", metavar="VAR",
                        help="store the result (JSON data) in the variable VAR")(func)
        func = argument("--json", action="store_true", help="print the result as JSON")(func)
        func = magic_arguments(name=f"parallalx {name}")(func)
        SUBCOMMANDS[name] = Subcommand(name, func, help, cell)
        return func

    return register


def usage() -> str:
    width = max(len(n) for n in SUBCOMMANDS)
    lines = [
        "usage: %parallalx [SUBCOMMAND] [ARGS] [--json] [-o VAR]",
        "",
        "Without a subcommand: the live overview (this device, paired devices, requests).",
        "",
        "subcommands:",
        *(f"  {n.ljust(width)}  {s.help}" for n, s in SUBCOMMANDS.items()),
        "",
        "`%parallalx SUBCOMMAND --help` shows a subcommand's options. `%%parallalx` runs one",
        "subcommand per line of the cell, or gives the cell body to `%%parallalx invite URL`.",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- running one


def run_subcommand(shell: Any, line: str, cell: str | None = None) -> None:
    """Parse and run one `%parallalx` line; display or store its result."""
    parts = line.strip().split(None, 1)
    if not parts:
        _show_overview()
        return
    name, rest = parts[0], parts[1] if len(parts) > 1 else ""
    if name in ("-h", "--help", "help"):
        print(usage())
        return
    sub = SUBCOMMANDS.get(name)
    if sub is None:
        raise magic_error(
            f"unknown subcommand {name!r}; one of: {', '.join(SUBCOMMANDS)} (see --help)"
        )
    try:  # posix splitting: `--purpose "two words"` loses its quotes (IPython keeps them)
        argv = arg_split(rest, posix=True)
    except ValueError as err:  # unbalanced quotes
        raise magic_error(f"{name}: {err}") from None
    if asks_for_help(sub.parser, argv):
        print(sub.format_help())
        return
    try:
        args = sub.parser.parse_args(argv)
    except UsageError as err:
        raise magic_error(f"{name}: {err}") from None
    if cell is not None and cell.strip() and not sub.takes_cell:
        raise magic_error(f"{name} takes no cell body")
    if args.output is not None and (
        not args.output.isidentifier() or keyword.iskeyword(args.output)
    ):
        raise magic_error(f"-o needs a Python variable name, not {args.output!r}")
    ctx = Context(shell, cell)
    try:
        result = sub.func(ctx, args)
        if args.output is not None:
            shell.user_ns[args.output] = result.data
        if args.json:
            print(json.dumps(result.data, indent=2))
        elif result.view is not None:
            shown = result.view()
            if isinstance(shown, str):
                print(shown)
            elif shown is not None:
                display(shown)
    except (ClientError, ServerNotFound) as err:
        _forget_if_unreachable(err)
        raise magic_error(str(err)) from None
    except CommandError as err:
        raise magic_error(str(err)) from None


class _HelpAsked(Exception):
    pass


class _HelpProbe(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, nargs=0, default=argparse.SUPPRESS)

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        raise _HelpAsked


class _ProbeParser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise UsageError(message)


def asks_for_help(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    """Whether argparse, given `argv`, meets -h/--help as an option. The magics' parsers have
    no help option (IPython adds none), and a plain word test would take `--help` inside a value
    (`--purpose "train --help now"`, a script's arguments, words after `--`) for a request for
    help and silently not run the command; so a copy of the parser with a help option that only
    reports is run over the words, and any error before it means "no help"."""
    if not {"-h", "--help"} & {word.split("=", 1)[0] for word in argv}:
        return False
    probe = _ProbeParser(parents=[parser], add_help=False, conflict_handler="resolve")
    probe.add_argument("-h", "--help", action=_HelpProbe)
    try:
        probe.parse_known_args(argv)
    except _HelpAsked:
        return True
    except (UsageError, argparse.ArgumentError, SystemExit):
        return False
    return False


def _forget_if_unreachable(err: Exception) -> None:
    """The server may have restarted elsewhere: find it afresh on the next call."""
    if isinstance(err, ClientError) and err.status is None:
        api.disconnect()


def _show_overview() -> None:
    from .widgets import Overview

    try:
        display(Overview(api.connect()))
    except (ClientError, ServerNotFound) as err:
        _forget_if_unreachable(err)
        raise magic_error(str(err)) from None


def run_script(shell: Any, body: str) -> None:
    """`%%parallalx` with no subcommand: each line of the body is one `%parallalx` line
    (`$name`/`{expr}` expanded from the user's namespace); stops at the first error."""
    formatter = DollarFormatter()
    for raw in body.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            line = formatter.vformat(line, args=[], kwargs=dict(shell.user_ns))
        except Exception:  # like IPython: leave a line it cannot expand as it is
            pass
        run_subcommand(shell, line)


# ---------------------------------------------------------------------------- the magic


@magics_class
class ParallalxMagics(Magics):
    @line_cell_magic
    def parallalx(self, line: str, cell: str | None = None) -> None:
        """Pool this device with others into a training cluster: `%parallalx --help`."""
        if cell is not None and not line.strip():
            run_script(self.shell, cell)
        else:
            run_subcommand(self.shell, line, cell)


def load_ipython_extension(ipython: Any) -> None:
    ipython.register_magics(ParallalxMagics)


def unload_ipython_extension(ipython: Any) -> None:
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("parallalx", None)
    api.disconnect()


# ---------------------------------------------------------------------------- the command table

Handler = Callable[[Context, Any], Result]
View = Callable[[Context, Any, Any], Any]

#: the notebook's own implementation of a table command (instead of its REST call and text)
HANDLERS: dict[str, Handler] = {}
#: what a table command displays instead of its text (a live widget)
VIEWS: dict[str, View] = {}


def handles(name: str) -> Callable[[Handler], Handler]:
    """`func(ctx, args) -> Result` runs the table command `name` in a notebook."""

    def register(func: Handler) -> Handler:
        HANDLERS[name] = func
        return func

    return register


def shows(name: str) -> Callable[[View], View]:
    """`func(ctx, args, data)` builds what the table command `name` displays."""

    def register(func: View) -> View:
        VIEWS[name] = func
        return func

    return register


def _table_subcommand(command: Command) -> None:
    """`%parallalx <command>` from the command table: its arguments, help and REST call."""

    def run(ctx: Context, args: Any) -> Result:
        handler = HANDLERS.get(command.name)
        if handler is not None:
            return handler(ctx, args)
        if command.call is None:
            raise magic_error(f"{command.name}: not available in a notebook")
        inv = ctx.invocation(command.name, args)
        data = command.call(inv)
        view = VIEWS.get(command.name)
        if view is not None:
            return Result(data, lambda: view(ctx, args, data))
        return Result(data, lambda: command.show(inv, data))

    run.__name__ = run.__qualname__ = f"parallalx_{command.name.replace('-', '_')}"
    run.__doc__ = command.description_for(MAGIC) or command.help_for(MAGIC)
    func: Any = run
    for flags, options in reversed(command.arguments(MAGIC)):
        func = argument(*flags, **options)(func)
    subcommand(command.name, command.help_for(MAGIC), cell=command.cell)(func)


for _command in COMMANDS.values():
    if MAGIC in _command.surfaces:
        _table_subcommand(_command)


@handles("status")
def _status(ctx: Context, args: Any) -> Result:
    from .widgets import StatusView, status_data

    data = status_data(ctx.connection)
    return Result(data, lambda: StatusView(data))


@shows("devices")
def _devices(ctx: Context, args: Any, data: Any) -> Any:
    from .widgets import DeviceTable

    return DeviceTable(ctx.connection)


@shows("discover")
def _discover(ctx: Context, args: Any, data: Any) -> Any:
    from .nearby import NearbyTable

    return NearbyTable(ctx.connection, data)


@shows("requests")
def _requests(ctx: Context, args: Any, data: Any) -> Any:
    from .widgets import Inbox

    return Inbox(ctx.connection, direction=args.direction, show_all=args.all)


@shows("invite")
def _invite(ctx: Context, args: Any, sent: Any) -> Any:
    from .widgets import Inbox

    return Inbox(ctx.connection, ids=[sent["id"]], title="Request sent")


@shows("accept")
@shows("reject")
def _decided(ctx: Context, args: Any, decided: Any) -> Any:
    from .widgets import RequestCard

    return RequestCard(decided, ctx.connection)
