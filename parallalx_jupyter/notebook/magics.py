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

Adding a subcommand is a few lines, anywhere that is imported when the extension loads:

    from parallalx_jupyter.notebook.magics import Result, argument, subcommand

    @subcommand("kernels", "list this device's kernels")
    @argument("--all", action="store_true", help="include non-Python kernels")
    def _kernels(ctx, args):
        '''List the kernelspecs a worker can run in.'''
        data = ctx.connection.call("GET", "kernels")
        return Result(data, lambda: my_widget(data))   # or a str for plain text

`ctx.connection` is the `Connection` (REST API), `ctx.cell` the cell body (with `cell=True`).
"""

from __future__ import annotations

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

from . import api
from .api import ClientError, Connection, ServerNotFound

__all__ = [
    "SUBCOMMANDS",
    "Context",
    "magic_error",
    "ParallalxMagics",
    "Result",
    "Subcommand",
    "argument",
    "load_ipython_extension",
    "subcommand",
    "unload_ipython_extension",
]


def magic_error(message: str) -> UsageError:
    """A failed subcommand, as the exception to raise. It is a plain UsageError because IPython
    shows exactly that type (not subclasses) as one line without a traceback, and still marks
    the cell as failed (so "Run all" stops there)."""
    text = " ".join(str(message).split())
    return UsageError("parallalx: " + (text if len(text) <= 500 else text[:499] + "…"))


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
    if {"-h", "--help"} & set(rest.split()):
        print(sub.format_help())
        return
    try:  # posix splitting: `--purpose "two words"` loses its quotes (IPython keeps them)
        args = sub.parser.parse_args(arg_split(rest, posix=True))
    except ValueError as err:  # unbalanced quotes
        raise magic_error(f"{name}: {err}") from None
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


# ---------------------------------------------------------------------------- subcommands


@subcommand("status", "this device, the server the kernel talks to, counts")
def _status(ctx: Context, args: Any) -> Result:
    """Show this device (name, ID, peer URLs, resources), the Jupyter server this kernel talks
    to and how it was found, and how many devices are paired and requests open."""
    from .widgets import StatusView, status_data

    data = status_data(ctx.connection)
    return Result(data, lambda: StatusView(data))


@subcommand("devices", "paired devices (live table with Revoke buttons)")
def _devices(ctx: Context, args: Any) -> Result:
    """List the devices paired with this one: name, ID, role, state."""
    from .widgets import DeviceTable

    conn = ctx.connection
    return Result(conn.devices(), lambda: DeviceTable(conn))


@subcommand("requests", "connection requests (live inbox with Accept / Reject)")
@argument("--all", action="store_true", help="include decided, expired and superseded ones")
@argument("--direction", choices=["incoming", "outgoing"], help="only one direction")
def _requests(ctx: Context, args: Any) -> Result:
    """List connection requests: who asks (name, device ID), what is asked, the verification
    code and the expiry. Incoming ones get Accept / Reject buttons."""
    from .widgets import Inbox

    conn = ctx.connection
    data = conn.requests("all" if args.all else "open", args.direction)
    return Result(data, lambda: Inbox(conn, direction=args.direction, show_all=args.all))


ASK_FIELDS = {"purpose": str, "nthreads": int, "memory_limit_gb": float, "gpus": int,
              "duration_hours": float}


def _parse_asks(body: str) -> dict[str, Any]:
    """`%%parallalx invite` body: a JSON object, or `key: value` / `key = value` lines."""
    text = body.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            asks = json.loads(text)
        except ValueError as err:
            raise magic_error(f"invite: the cell body is not valid JSON: {err}") from None
        if not isinstance(asks, dict):
            raise magic_error("invite: the cell body must be a JSON object")
        return asks
    asks: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":") if ":" in line else line.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in ASK_FIELDS:
            raise magic_error(
                f"invite: cannot read {raw.strip()!r}; lines are `key: value` with key one of "
                + ", ".join(ASK_FIELDS)
            )
        try:
            asks[key] = ASK_FIELDS[key](value.strip())
        except ValueError:
            raise magic_error(f"invite: {key} must be a number, not {value.strip()!r}") from None
    return asks


@subcommand("invite", "send a connection request to another device", cell=True)
@argument("peer_url", help="the other device's peer address, e.g. https://192.168.1.20:8476")
@argument("--offer", action="store_true",
          help="offer this device as a worker instead of inviting the peer")
@argument("--purpose", help="what the workers will be used for")
@argument("--nthreads", type=int, help="threads per worker")
@argument("--memory-limit-gb", dest="memory_limit_gb", type=float, help="memory limit")
@argument("--gpus", type=int, help="GPUs to use")
@argument("--duration-hours", dest="duration_hours", type=float, help="how long")
def _invite(ctx: Context, args: Any) -> Result:
    """Send a connection request to another device's peer listener. The verification code
    shown must match the one the other device's user sees before they accept. With
    `%%parallalx invite URL`, the cell body gives what is asked (`key: value` lines or JSON)."""
    from .widgets import Inbox

    asks = _parse_asks(ctx.cell or "")
    for key in ASK_FIELDS:
        if getattr(args, key) is not None:
            asks[key] = getattr(args, key)
    conn = ctx.connection
    sent = conn.invite(args.peer_url, offer=args.offer, **asks)
    return Result(sent, lambda: Inbox(conn, ids=[sent["id"]], title="Request sent"))


@subcommand("accept", "accept an incoming connection request")
@argument("request_id", help="the request's ID (see %%parallalx requests)")
@argument("--kernel", help="kernelspec the worker runs in")
def _accept(ctx: Context, args: Any) -> Result:
    """Accept an incoming connection request: only if its verification code matches the code
    on the other device."""
    from .widgets import RequestCard

    conn = ctx.connection
    decided = conn.accept(args.request_id, args.kernel)
    return Result(decided, lambda: RequestCard(decided, conn))


@subcommand("reject", "reject an incoming connection request")
@argument("request_id", help="the request's ID (see %%parallalx requests)")
@argument("--reason", help="a note for this device's records")
def _reject(ctx: Context, args: Any) -> Result:
    """Reject an incoming connection request."""
    from .widgets import RequestCard

    conn = ctx.connection
    decided = conn.reject(args.request_id, args.reason)
    return Result(decided, lambda: RequestCard(decided, conn))


@subcommand("revoke", "stop sharing with a paired device")
@argument("device", help="device ID (a unique prefix is enough) or name")
def _revoke(ctx: Context, args: Any) -> Result:
    """Revoke a paired device: its workers are removed and the device is told."""
    from .widgets import plain

    device = ctx.connection.revoke(args.device)
    return Result(device, lambda: f"revoked {plain(device.get('name'), 64)} "
                                  f"[{plain(device.get('id_display'), 80)}]")
