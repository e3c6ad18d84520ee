"""The command table: the commands of the `parallalx` CLI and of the `%parallalx` magic, once.

Each `Command` declares its name, its one-line help, its `--help` description, its arguments
(each with its help), the REST call it makes (`call`, through `client.ApiClient`) and how its
result prints (`text`, made by the `text` module). `cli.build_parser` and the magic
(`notebook.magics`) build their parsers from this table and run `call` and `text`; a surface adds
only what is its own:

- the CLI: its global options (`--url`, `--token`, `--home`, `--json`, `--timeout`), exit codes,
  `run` (the job runs in the CLI's process, progress on stderr) and `demo`;
- the magic: `--json` / `-o VAR` on every command, a live widget instead of the text where one
  exists (`devices`, `requests`, ...), and `status`, `run` and `install`, which show live views.

A command lists the surfaces it exists on (`surfaces`); an argument may too. Help texts are
one text for both surfaces, or a `{surface: text}` dict where they differ; `{prog}` in them
becomes `parallalx` or `%parallalx`.

Sits with the core: imports `client` and `text` only.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import text
from .client import ApiClient, ClientError, match_device

CLI = "cli"
MAGIC = "magic"
BOTH = (CLI, MAGIC)
PROGS = {CLI: "parallalx", MAGIC: "%parallalx"}

Texts = str | Mapping[str, str] | None


class CommandError(Exception):
    """A command refused its input: one readable line (the surface adds its prefix)."""


@dataclass
class Invocation:
    """One run of command `name`: the REST client, the parsed arguments, which surface runs it
    and, for the magic's cell form, the cell body."""

    name: str
    api: ApiClient
    args: argparse.Namespace
    surface: str = CLI
    cell: str | None = None

    @property
    def prog(self) -> str:
        return PROGS[self.surface]


def _pick(value: Texts, surface: str) -> str | None:
    """A help text for `surface`, with `{prog}` filled in."""
    if isinstance(value, Mapping):
        value = value.get(surface)
    return None if value is None else value.replace("{prog}", PROGS[surface])


@dataclass(frozen=True)
class Arg:
    """One `add_argument(*flags, **options)`; `options["help"]` may be per surface."""

    flags: tuple[str, ...]
    options: Mapping[str, Any]
    surfaces: tuple[str, ...] = BOTH

    def for_surface(self, surface: str) -> tuple[tuple[str, ...], dict[str, Any]]:
        options = dict(self.options)
        if "help" in options and options["help"] is not argparse.SUPPRESS:
            # argparse %-formats help strings: a literal "%" (the magic's prog) is "%%"
            helped = _pick(options["help"], surface)
            options["help"] = None if helped is None else helped.replace("%", "%%")
        return self.flags, options


def arg(*flags: str, surfaces: tuple[str, ...] = BOTH, **options: Any) -> Arg:
    return Arg(flags, options, surfaces)


@dataclass(frozen=True)
class Command:
    name: str
    help: Texts
    description: Texts = None
    args: tuple[Arg, ...] = ()
    call: Callable[[Invocation], Any] | None = None
    text: Callable[[Invocation, Any], str] | None = None
    surfaces: tuple[str, ...] = BOTH
    cell: bool = False  # the magic's `%%parallalx NAME` passes its body as `Invocation.cell`

    def help_for(self, surface: str) -> str:
        return _pick(self.help, surface) or ""

    def description_for(self, surface: str) -> str | None:
        return _pick(self.description, surface)

    def arguments(self, surface: str) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
        return [a.for_surface(surface) for a in self.args if surface in a.surfaces]

    def show(self, inv: Invocation, data: Any) -> str:
        """The result as text (`readable` lines when the command has no text of its own)."""
        if self.text is None:
            return readable(data)
        return self.text(inv, data)


def readable(value: Any, indent: int = 0) -> str:
    """Any JSON-like answer as plain lines, never a Python repr: `key: value` per line, nested
    objects indented under their key, lists of plain values joined with commas. The text of a
    command that has none of its own, and of a workload's summary (`parallalx run`)."""
    pad = "  " * indent

    def scalar(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.6g}"
        return "-" if v is None or v == "" else text.plain(v)

    def flat(v: Any) -> bool:
        return not isinstance(v, dict | list | tuple) or (
            isinstance(v, list | tuple) and all(not isinstance(x, dict | list | tuple) for x in v))

    if isinstance(value, dict):
        if not value:
            return f"{pad}(none)"
        lines = []
        for key, v in value.items():
            if flat(v):
                shown = (", ".join(scalar(x) for x in v) or "(none)") if isinstance(
                    v, list | tuple) else scalar(v)
                lines.append(f"{pad}{text.plain(key, 64)}: {shown}")
            else:
                lines.append(f"{pad}{text.plain(key, 64)}:")
                lines.append(readable(v, indent + 1))
        return "\n".join(lines)
    if isinstance(value, list | tuple):
        if not value:
            return f"{pad}(none)"
        if flat(value):
            return pad + ", ".join(scalar(x) for x in value)
        return "\n".join(readable(v, indent) if flat(v) else f"{pad}-\n{readable(v, indent + 1)}"
                         for v in value)
    return pad + scalar(value)


# ---------------------------------------------------------------------------- requests


def finite(text: str) -> float:
    """A float that JSON can carry: NaN and infinity would reach the server as `NaN`, which it
    refuses as a body that "is not valid JSON", naming neither the option nor the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
    return value


def requirement(text: str) -> str:
    """A PEP 508 requirement, checked here so that a typo is one line naming the option, not
    the server's (or the launch's) three lines with a caret under the spot."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        Requirement(text.strip())
    except InvalidRequirement as err:
        reason = str(err).splitlines()[0] if str(err) else "not PEP 508"
        raise argparse.ArgumentTypeError(
            f"not a valid requirement {text!r}: {reason} (e.g. torch>=2.1)") from None
    return text


ASK_FIELDS = {"purpose": str, "nthreads": int, "memory_limit_gb": finite, "gpus": int,
              "duration_hours": finite}


def parse_asks(body: str | None) -> dict[str, Any]:
    """`%%parallalx invite` body: a JSON object, or `key: value` / `key = value` lines."""
    content = (body or "").strip()
    if not content:
        return {}
    if content.startswith("{"):
        try:
            asks = json.loads(content)
        except ValueError as err:
            raise CommandError(f"invite: the cell body is not valid JSON: {err}") from None
        if not isinstance(asks, dict):
            raise CommandError("invite: the cell body must be a JSON object")
        return {key: _ask_value(key, value) for key, value in asks.items()}
    asks = {}
    for raw in content.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":") if ":" in line else line.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in ASK_FIELDS:
            raise CommandError(
                f"invite: cannot read {raw.strip()!r}; lines are `key: value` with key one of "
                + ", ".join(ASK_FIELDS)
            )
        asks[key] = _ask_value(key, value.strip())
    return asks


def _ask_value(key: str, raw: Any) -> Any:
    """One field of an invite's body, as its option would take it: the number kinds checked
    here by name (`gpus: 1.5` is not a whole number; NaN would reach the server as JSON it
    cannot read). Unknown keys of a JSON body pass on, for the server to name."""
    kind = ASK_FIELDS.get(key)
    if kind is None or kind is str or raw is None:
        return raw
    whole = kind is int
    shown = raw if isinstance(raw, str) else json.dumps(raw)
    try:
        value = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or (whole and not value.is_integer()):
        need = "a whole number" if whole else "a finite number"
        raise CommandError(f"invite: {key} must be {need}, not {shown!r}")
    return int(value) if whole else value


def _invite(inv: Invocation) -> Any:
    a = inv.args
    asks = parse_asks(inv.cell)
    for key in (*ASK_FIELDS, "requirements"):
        if getattr(a, key, None) is not None:
            asks[key] = getattr(a, key)
    return inv.api.invite(a.peer_url, offer=a.offer, **asks)


def _request_text(inv: Invocation, request: Any) -> str:
    return text.request_text(request)


def _invite_text(inv: Invocation, sent: Any) -> str:
    """The request and what happens next: the invite returns at once (no "Waiting..." that
    then exits); the answer comes later, and the CLI can wait for it (`--wait`)."""
    wait = " or `parallalx invite ... --wait` waits for it" if inv.surface == CLI else ""
    return (text.request_text(sent)
            + "\nNext: the other device's user compares this code with the one on their screen "
              f"and accepts or rejects; `{inv.prog} requests --direction outgoing` shows the "
              f"answer{wait}.")


def _requests_text(inv: Invocation, rows: Any) -> str:
    a = inv.args
    out = text.requests_text(
        rows,
        empty="No connection requests." if a.all else "No open connection requests.")
    if a.direction != "outgoing":
        # never-revealed requests are not listed; their number is, so a flood is not silent
        incomplete = inv.api.device().get("incomplete_requests") or 0
        if incomplete:
            out += "\n\n" + text.incomplete_line(incomplete)
    return out


def _request_id(inv: Invocation) -> str:
    rid = inv.args.request_id.strip()
    if not rid:
        raise CommandError(f"{inv.name}: the request ID is empty "
                           f"(`{inv.prog} requests` lists them)")
    return rid


def _devices_text(inv: Invocation, rows: Any) -> str:
    try:
        cluster = inv.api.cluster()
    except ClientError:  # a server without the cluster layer still lists devices
        cluster = None
    return text.devices_text(rows, cluster)


# ---------------------------------------------------------------------------- cluster, jobs

CLUSTER_ACTIONS = ("show", "start", "stop", "add-self", "retry")


def _cluster_action(value: str) -> str:
    if value not in CLUSTER_ACTIONS:
        raise argparse.ArgumentTypeError("action must be show, start, stop, add-self or retry")
    return value


def _cluster(inv: Invocation) -> Any:
    args = inv.args
    if args.action == "retry":
        if not args.device:
            raise CommandError("cluster retry: name the main device to join again")
        try:
            main = match_device(inv.api.devices(), args.device)
        except ValueError as err:
            raise CommandError(f"cluster retry: {err}") from None
        return inv.api.retry_join(main["id"])
    if args.device:
        raise CommandError(f"cluster {args.action}: takes no device")
    return inv.api.cluster(args.action, nthreads=args.nthreads, kernel=args.kernel)


def _cluster_text(inv: Invocation, state: Any) -> str:
    """The cluster with every device named as `devices` names it (name, displayed ID), the
    main devices this one serves included; raw IDs only where the server cannot say."""
    known: dict[str, dict[str, Any]] = {}
    try:
        for device in [*inv.api.devices(), inv.api.device()]:
            known[str(device.get("id"))] = device
    except ClientError:
        pass
    for worker in state.get("workers") or []:
        device = known.get(str(worker.get("device_id"))) or {}
        worker.setdefault("device_name", device.get("name"))
        worker["device_name"] = worker["device_name"] or device.get("name")
        worker["device_id_display"] = device.get("id_display")
    for entry in state.get("serving") or []:
        device = known.get(str(entry.get("main_id"))) or {}
        entry["main_name"] = device.get("name")
        entry["main_id_display"] = device.get("id_display")
    return text.cluster_text(state)


def _jobs(inv: Invocation) -> Any:
    a = inv.args
    if a.action == "list":
        if a.job:  # `jobs list extra`: a mistake, as every other command's extras are
            raise CommandError(f"jobs list: takes no job ID, got {a.job!r} (`{inv.prog} jobs "
                               "output ID` shows one job)")
        return inv.api.jobs()
    if not a.job:
        raise CommandError(f"jobs {a.action}: which job? (an ID from `{inv.prog} jobs`)")
    if a.action == "cancel":
        return inv.api.cancel_job(a.job)
    if a.action == "output":
        return inv.api.job(a.job)
    inv.api.remove_job(a.job)
    return {"removed": a.job}


def _jobs_text(inv: Invocation, data: Any) -> str:
    a = inv.args
    if a.action == "list":
        return text.jobs_table(data)
    if a.action == "cancel":
        return f"cancel requested for {data['workload']} job {data['id']}"
    if a.action == "output":
        return text.job_output_text(data)
    return f"removed job {a.job}"


# ---------------------------------------------------------------------------- the table

_KERNEL = arg("--kernel", help="kernelspec to check (default: the server's Python)")
_IDE = arg("--ide", help="use the interpreter this IDE is configured with")

_COMMANDS = [
    Command(
        "device", "show this device",
        "This device: name, device ID, peer URLs, resources, OS.",
        args=(arg("--refresh", action="store_true", help="re-probe CPUs, memory and GPUs"),),
        call=lambda inv: inv.api.device(inv.args.refresh),
        text=lambda inv, info: text.device_text(info),
        surfaces=(CLI,),
    ),
    Command(  # the magic's own: it shows the server the kernel found (notebook.magics)
        "status", "this device, the server the kernel talks to, counts",
        "Show this device (name, ID, peer URLs, resources), the Jupyter server this kernel talks "
        "to and how it was found, and how many devices are paired and requests open.",
        surfaces=(MAGIC,),
    ),
    Command(
        "invite", "send a connection request to another device",
        {
            CLI: "Send a connection request to another device's peer listener. The verification "
                 "code shown must match the one the other device's user sees before they accept.",
            MAGIC: "Send a connection request to another device's peer listener. The verification "
                   "code shown must match the one the other device's user sees before they "
                   "accept. With `%%parallalx invite URL`, the cell body gives what is asked "
                   "(`key: value` lines or JSON).",
        },
        args=(
            arg("peer_url",
                help="the other device's peer address, e.g. https://192.168.1.20:8476"),
            arg("--offer", action="store_true",
                help="offer this device as a worker instead of inviting the peer"),
            arg("--purpose", help="what the workers will be used for"),
            arg("--nthreads", type=int, help="threads per worker"),
            arg("--memory-limit-gb", dest="memory_limit_gb", type=finite, help="memory limit"),
            arg("--gpus", type=int, help="GPUs to use"),
            arg("--duration-hours", dest="duration_hours", type=finite, help="how long"),
            arg("--requirement", dest="requirements", action="append", type=requirement,
                help="a package the job needs on the worker (repeatable)"),
            arg("--wait", action="store_true", surfaces=(CLI,),
                help="then wait for the other device's user to accept or reject (until the "
                     "request expires; Ctrl-C stops waiting, the request stays open)"),
        ),
        call=_invite,
        text=_invite_text,
        cell=True,
    ),
    Command(
        "discover",
        {CLI: "devices nearby on the local network, with the command that invites each",
         MAGIC: "devices nearby on the local network (a table with Invite buttons)"},
        "List the devices that announce themselves on this local network (mDNS/DNS-SD): name, "
        "device ID, address, and the `{prog} invite URL` command for each. An announcement "
        "proves nothing: the verification code is the check.",
        call=lambda inv: inv.api.nearby(),
        text=lambda inv, rows: text.nearby_text(rows, inv.prog),
    ),
    Command(
        "requests",
        {CLI: "list connection requests",
         MAGIC: "connection requests (live inbox with Accept / Reject)"},
        {CLI: "List connection requests: who asks (name, device ID), what is asked, the "
              "verification code and the expiry.",
         MAGIC: "List connection requests: who asks (name, device ID), what is asked, the "
                "verification code and the expiry. Incoming ones get Accept / Reject buttons."},
        args=(
            arg("--all", action="store_true",
                help="include decided, expired and superseded ones"),
            arg("--direction", choices=["incoming", "outgoing"], help="only one direction"),
        ),
        call=lambda inv: inv.api.requests("all" if inv.args.all else "open",
                                          inv.args.direction),
        text=_requests_text,
    ),
    Command(
        "accept", "accept an incoming connection request",
        "Accept an incoming connection request: only if its verification code matches the code "
        "on the other device.",
        args=(
            arg("request_id", help="the request's ID (see `{prog} requests`)"),
            arg("--kernel", help="kernelspec the worker runs in"),
        ),
        call=lambda inv: inv.api.accept(_request_id(inv), inv.args.kernel),
        text=_request_text,
    ),
    Command(
        "reject", "reject an incoming connection request",
        "Reject an incoming connection request.",
        args=(
            arg("request_id", help="the request's ID (see `{prog} requests`)"),
            arg("--reason", help="a note for this device's records"),
        ),
        call=lambda inv: inv.api.reject(_request_id(inv), inv.args.reason),
        text=_request_text,
    ),
    Command(
        "devices",
        {CLI: "list paired devices", MAGIC: "paired devices (live table with Revoke buttons)"},
        "List the devices paired with this one: name, ID, role, state, the resources granted "
        "and their workers.",
        call=lambda inv: inv.api.devices(),
        text=_devices_text,
    ),
    Command(
        "revoke", "stop sharing with a paired device",
        "Revoke a paired device: its workers are removed and the device is told.",
        args=(arg("device", help="device ID (a unique prefix is enough) or name"),),
        call=lambda inv: inv.api.revoke(inv.args.device),
        text=lambda inv, device: text.revoked_text(device),
    ),
    Command(
        "cluster", "this device's cluster: show, start, stop, add-self, retry DEVICE",
        "The scheduler this device runs as a main device, workers per device (this device's "
        "own worker starts with the cluster unless main_device_trains is off), the dashboard "
        "link, the devices whose workers it refused and why, and the main devices this device "
        "serves. add-self runs this device's own worker in --kernel or with --nthreads; retry "
        "DEVICE joins that main device's cluster again now (a refused or failed join).",
        args=(
            arg("action", nargs="?", default="show", type=_cluster_action,
                help="show | start | stop | add-self | retry"),
            arg("device", nargs="?",
                help="retry: the main device (its name, or its ID or a unique prefix of it)"),
            arg("--kernel", help="add-self: kernelspec the local worker runs in"),
            arg("--nthreads", type=int, default=1, help="add-self: worker threads"),
        ),
        call=_cluster,
        text=_cluster_text,
    ),
    Command(
        "kernels", "kernels (environments) a worker can run in",
        "List this device's kernelspecs with interpreter and Python version; non-Python kernels "
        "are listed as not selectable, with the reason.",
        args=(arg("--refresh", action="store_true",
                  help="look again (re-run every interpreter)"),),
        call=lambda inv: inv.api.kernels(inv.args.refresh),
        text=lambda inv, rows: text.kernels_text(rows),
    ),
    Command(
        "ides", "IDEs on this device and the Python each is configured to use",
        "List IDEs found on this device, their version and configured interpreter.",
        call=lambda inv: inv.api.ides(),
        text=lambda inv, rows: text.ides_text(rows),
    ),
    Command(
        "env", "check or install what an environment needs",
        "Compare an environment (a kernel, an IDE's Python, else the server's) with this "
        "device's versions of the cluster-critical packages plus the given requirements; "
        "`install` installs what is missing with that environment's pip.",
        args=(
            arg("action", choices=["check", "install"],
                help="check: show what is missing; install: install it"),
            arg("-r", "--requirement", dest="requirements", action="append", default=[],
                type=requirement, help="an extra requirement of the job (repeatable)"),
            _KERNEL, _IDE,
        ),
        call=lambda inv: inv.api.environment(inv.args.action, inv.args.requirements,
                                             inv.args.kernel, inv.args.ide),
        text=lambda inv, result: text.environment_text(result),
        surfaces=(CLI,),
    ),
    Command(  # the magic adds one progress bar per package (notebook.environment)
        "install", "check or install what a kernel needs for the cluster",
        "Compare the selected environment with this device's versions of the cluster-critical "
        "packages plus the given requirements, and install what is missing with that "
        "environment's pip, one progress bar per package.",
        args=(
            arg("requirements", nargs="*", help="extra requirements of the job (PEP 508)"),
            _KERNEL, _IDE,
            arg("--check", action="store_true", help="only show what would be installed"),
        ),
        call=lambda inv: inv.api.environment("check" if inv.args.check else "install",
                                             inv.args.requirements, inv.args.kernel,
                                             inv.args.ide),
        text=lambda inv, result: text.environment_text(result),
        surfaces=(MAGIC,),
    ),
    Command(
        "workloads", "workloads installed on this device (train, sweep, inference, ...)",
        "List the workloads the server finds (entry-point group `parallalx_jupyter.workloads`).",
        call=lambda inv: inv.api.workloads(),
        text=lambda inv, rows: text.workloads_table(rows),
    ),
    Command(  # the job runs in the surface's process: `cli.cmd_run`, `notebook.jobs`
        "run",
        {CLI: "run a workload on the cluster (this process owns the job)",
         MAGIC: "run a workload in this kernel: run NAME key=value ..."},
        {CLI: "Run a workload; parameters as key=value (JSON values, or text: Python objects as "
              "package.module:attribute).",
         MAGIC: "Start the workload in the background with a live view; the job is stored in VAR "
                "(-o, default `job`) and listed by this device's server (panel, CLI, "
                "`%parallalx jobs`)."},
        args=(
            arg("workload", help="workload name (see `{prog} workloads`)"),
            arg("params", nargs="*", metavar="key=value",
                help={CLI: "parameters (JSON values, or text: Python objects as "
                           "package.module:attribute)",
                      MAGIC: "key=value parameters (JSON values; notebook variables for "
                             "Python objects)"}),
            arg("--params-json", metavar="JSON", help="parameters as one JSON object"),
            arg("--name", help="name shown in the job list"),
            arg("--scheduler", metavar="ADDR",
                help={CLI: "a Dask scheduler address (default: this device's cluster)",
                      MAGIC: "Dask scheduler address (default: a `client` variable, the "
                             "default Dask client, or this device's cluster)"}),
            # a job the server registered for us (`server.job_spawner`)
            arg("--job-id", help=argparse.SUPPRESS, surfaces=(CLI,)),
        ),
    ),
    Command(  # the job runs in the CLI's process (`cli_launch`) or the kernel's (notebook/jobs)
        "launch", {CLI: "run a script on every worker, torchrun-style (this process owns the job)",
                   MAGIC: "run a script (or the cell below) on every worker, torchrun-style"},
        {CLI: "Run SCRIPT as __main__ once per worker with its ARGS (sys.argv), the torch "
              "process group formed and torchrun's variables (RANK, WORLD_SIZE, ...) set. "
              "Options go before SCRIPT; everything after it is the script's.",
         MAGIC: "Run SCRIPT, or the cell below `%%parallalx launch [options] [-- ARGS]`, as "
                "__main__ once per worker (sys.argv = [script, *ARGS]), the torch process group "
                "formed and torchrun's variables set, in the background with a live view; the "
                "job is stored in VAR (-o, default `job`) and listed by this device's server."},
        args=(
            arg("--working-dir", metavar="DIR",
                help="ship DIR (at most 100 MB; .git, __pycache__, *.pyc left out) and run the "
                     "script inside it; default: the script alone"),
            arg("--scheduler", metavar="ADDR",
                help={CLI: "a Dask scheduler address (default: this device's cluster)",
                      MAGIC: "Dask scheduler address (default: a `client` variable, the "
                             "default Dask client, or this device's cluster)"}),
            arg("--workers", metavar="ADDR,...", help="only these workers"),
            arg("--name", help="name shown in the job list"),
            arg("--checkpoint-dir", metavar="DIR", help="write px.checkpoint()s here"),
            arg("--requirement", "-r", action="append", metavar="REQ", dest="requirements",
                type=requirement,
                help="a PEP 508 requirement each device's kernel must have (installed there "
                     "first when missing); repeat for more"),
            arg("--max-restarts", type=int, default=3,
                help="re-form the group at most this often after losing a device"),
            arg("--group-timeout", type=float, default=60.0,
                help="seconds a collective may wait for a rank"),
            arg("script", help="the Python script to run on each rank", surfaces=(CLI,)),
            arg("script", nargs="?", surfaces=(MAGIC,),
                help="the Python script to run on each rank (none with a cell: the cell is)"),
            arg("script_args", nargs=argparse.REMAINDER, metavar="ARGS",
                help="the script's arguments"),
        ),
        cell=True,
    ),
    Command(
        "jobs", "jobs of every workload on this device: list, cancel ID, output ID, remove ID",
        "The device's job list: jobs from every kernel, the CLI and the panel's view of them; "
        "`output ID`: the last lines a job's ranks printed, each after its rank and device.",
        args=(
            arg("action", nargs="?", default="list",
                choices=("list", "cancel", "output", "remove"),
                help="list (default) | cancel | output | remove"),
            arg("job", nargs="?", help="job ID (cancel, output, remove)"),
        ),
        call=_jobs,
        text=_jobs_text,
    ),
]

#: every command by name, in the order the surfaces list them
COMMANDS: dict[str, Command] = {c.name: c for c in _COMMANDS}
