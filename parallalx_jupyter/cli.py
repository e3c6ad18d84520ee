"""`parallalx`: the command line for headless devices and scripts.

It speaks to the local Jupyter server's REST API, exactly like the panel, widgets and magics, so
no behaviour lives only here. The server is found from `--url`/`--token`, the environment
(`PARALLALX_URL`, `PARALLALX_TOKEN`) or the `server.json` the extension writes into its home.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .client import ApiClient, ClientError, ServerNotFound, find_server, match_device
from .jobs.text import table as _table

EXIT_API = 1


class CliError(Exception):
    pass


def _api(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    url, token = args.server
    try:
        return ApiClient(url, token, timeout=args.timeout).call(method, path, body)
    except ClientError as err:
        raise CliError(str(err)) from None


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = ts - time.time()
    if delta > 0:
        return f"in {int(delta // 60)}m{int(delta % 60):02d}s"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _show_request(r: dict[str, Any]) -> str:
    code = r.get("code")
    pretty = f"{code[:3]} {code[3:]}" if code else "-"
    asks = r.get("asks") or {}
    return "\n".join([
        f"request {r['id']} ({r['direction']} {r['kind']}): {r['state']}",
        f"  peer:    {r['peer']['name']}  [{r['peer']['id_display']}]",
        f"  asks:    {asks.get('purpose', '')}"
        + "".join(f", {k}={v}" for k, v in asks.items() if k != "purpose" and v is not None),
        f"  code:    {pretty}   (must match the code on the other device)",
        f"  expires: {_ago(r.get('expires_at'))}",
    ])


def cmd_device(args: argparse.Namespace) -> Any:
    info = _api(args, "GET", "device" + ("?refresh=true" if args.refresh else ""))
    if args.json:
        return info
    p = info["profile"]
    acc = p.get("accelerators") or {}
    gpus = ", ".join(d["name"] for d in acc.get("cuda", [])) or ("MPS" if acc.get("mps") else "-")
    return "\n".join([
        f"name:       {info['name']}",
        f"device ID:  {info['id_display']}",
        f"peer URLs:  {', '.join(info['peer_urls'])}",
        f"resources:  {p['cpu_cores']} cores, {p['memory_bytes'] / 2**30:.1f} GiB, GPUs: {gpus}",
        f"os:         {p['os']} ({p['machine']}), Python {p['python']}",
    ])


def _asks(args: argparse.Namespace) -> dict[str, Any]:
    asks: dict[str, Any] = {}
    if args.purpose:
        asks["purpose"] = args.purpose
    for field in ("nthreads", "memory_limit_gb", "gpus", "duration_hours", "requirements"):
        value = getattr(args, field)
        if value is not None:
            asks[field] = value
    return asks


def cmd_invite(args: argparse.Namespace) -> Any:
    result = _api(args, "POST", "invitations", {
        "url": args.peer_url, "kind": "offer" if args.offer else "invite", "asks": _asks(args),
    })
    if args.json:
        return result
    return _show_request(result) + "\nWaiting for the other device's user to decide."


def cmd_requests(args: argparse.Namespace) -> Any:
    query = {"state": "all" if args.all else "open"}
    if args.direction:
        query["direction"] = args.direction
    rows = _api(args, "GET", "requests?" + urllib.parse.urlencode(query))
    if args.json:
        return rows
    text = "\n\n".join(_show_request(r) for r in rows) or "(no requests)"
    if args.direction != "outgoing":
        # never-revealed requests are not listed; their number is, so a flood is not silent
        incomplete = _api(args, "GET", "device").get("incomplete_requests") or 0
        if incomplete:
            text += "\n\n" + incomplete_line(incomplete)
    return text


def incomplete_line(count: int) -> str:
    """One line about requests opened but never completed (not listed as requests)."""
    what = "1 incomplete request" if count == 1 else f"{count} incomplete requests"
    return (f"{what}: opened by another device but never completed (a failed pairing, or "
            "someone probing this device); not listed above")


def cmd_decide(args: argparse.Namespace) -> Any:
    if not args.request_id.strip():
        raise CliError(f"{args.command}: the request ID is empty (`parallalx requests` lists them)")
    rid = urllib.parse.quote(args.request_id.strip(), safe="")
    if args.command == "accept":
        body: dict[str, Any] = {}
        if args.kernel:
            body["kernel"] = args.kernel
        result = _api(args, "POST", f"requests/{rid}/accept", body)
    else:
        result = _api(args, "POST", f"requests/{rid}/reject", {"reason": args.reason})
    return result if args.json else _show_request(result)


def cmd_devices(args: argparse.Namespace) -> Any:
    rows = _api(args, "GET", "devices")
    if args.json:
        return rows
    return _table(
        [[d["name"], d["id_display"][:15] + "…", d["role"], d["state"], _ago(d["paired_at"])]
         for d in rows],
        ["NAME", "DEVICE ID", "ROLE", "STATE", "PAIRED"],
    )


def cmd_revoke(args: argparse.Namespace) -> Any:
    try:
        device = match_device(_api(args, "GET", "devices"), args.device)
    except ValueError as err:
        raise CliError(str(err)) from None
    result = _api(args, "POST", f"devices/{device['id']}/revoke")
    return result if args.json else f"revoked {result['name']} [{result['id_display']}]"


def cmd_cluster(args: argparse.Namespace) -> Any:
    if args.action == "show":
        state = _api(args, "GET", "cluster")
    elif args.action == "add-self":
        body: dict[str, Any] = {"nthreads": args.nthreads}
        if args.kernel:
            body["kernel"] = args.kernel
        state = _api(args, "POST", "cluster/add-self", body)
    else:
        state = _api(args, "POST", f"cluster/{args.action}")
    if args.json:
        return state
    lines = [
        f"scheduler:  {state['scheduler_address'] or '(not running)'}",
        f"dashboard:  {state['dashboard_link'] or '-'}",
        f"CA:         {state['ca_fingerprint'] or '-'}",
    ]
    rows = [[w["device_id"][:15] + "…", w["name"][:20], w["address"], str(w["nthreads"])]
            for w in state["workers"]]
    lines.append("workers:\n" + _table(rows, ["DEVICE", "NAME", "ADDRESS", "THREADS"]))
    for entry in state["serving"]:
        lines.append(f"serving main {entry['main_id'][:15]}…: {entry['state']}"
                     + (f" ({entry['message']})" if entry.get("message") else ""))
    return "\n".join(lines)


def cmd_kernels(args: argparse.Namespace) -> Any:
    rows = _api(args, "GET", "kernels" + ("?refresh=true" if args.refresh else ""))
    if args.json:
        return rows
    return _table([[k["name"], k["language"], k.get("python_version") or "-",
                    "yes" if k["selectable"] else f"no: {k.get('reason')}",
                    k.get("interpreter") or "-"] for k in rows],
                  ["KERNEL", "LANGUAGE", "PYTHON", "SELECTABLE", "INTERPRETER"])


def cmd_ides(args: argparse.Namespace) -> Any:
    rows = _api(args, "GET", "ides")
    if args.json:
        return rows
    return _table([[i["id"], i["name"], i.get("version") or "-", i.get("interpreter") or "-"]
                   for i in rows if i["found"]], ["ID", "IDE", "VERSION", "PYTHON"])


def cmd_env(args: argparse.Namespace) -> Any:
    body: dict[str, Any] = {"requirements": args.requirements}
    if args.kernel:
        body["kernel"] = args.kernel
    if args.ide:
        body["ide"] = args.ide
    result = _api(args, "POST", f"environment/{args.action}", body)
    if args.json:
        return result
    rows = [[e["name"], e["required"] or "any", e["installed"] or "-", e["action"]]
            for e in result["diff"]]
    return f"python: {result['python']}\n" + _table(
        rows, ["PACKAGE", "REQUIRED", "INSTALLED", "ACTION"])


def cmd_workloads(args: argparse.Namespace) -> Any:
    from .jobs.text import workloads_table

    rows = _api(args, "GET", "workloads")
    return rows if args.json else workloads_table(rows)


def cmd_jobs(args: argparse.Namespace) -> Any:
    from .jobs.text import jobs_table

    if args.action == "list":
        rows = _api(args, "GET", "jobs")
        return rows if args.json else jobs_table(rows)
    if not args.job:
        raise CliError(f"jobs {args.action}: which job? (an ID from `parallalx jobs`)")
    job_id = urllib.parse.quote(args.job, safe="")
    if args.action == "cancel":
        job = _api(args, "POST", f"jobs/{job_id}/cancel")
        return job if args.json else f"cancel requested for {job['workload']} job {job['id']}"
    _api(args, "DELETE", f"jobs/{job_id}")
    return {"removed": args.job} if args.json else f"removed job {args.job}"


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
    from .jobs.text import eta

    p = summarize(job.progress) if job.progress else {}
    if p.get("message"):
        return f"  {job.state}: {p['message']}"
    if p.get("total"):
        loss = "" if p.get("loss") is None else f", loss {p['loss']:.4g}"
        return f"  {job.state}: {p['step']}/{p['total']}{loss}, ETA {eta(p.get('eta_s'))}"
    return f"  {job.state}"


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="parallalx", description="Pool your computers into one PyTorch training cluster."
    )
    parser.add_argument("--url", help="Jupyter server URL (default: from --home's server.json)")
    parser.add_argument("--token", help="Jupyter server token")
    parser.add_argument("--home", help="device state dir (env PARALLALX_HOME)")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per API call")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("device", help="show this device")
    p.add_argument("--refresh", action="store_true", help="re-probe CPUs, memory and GPUs")
    p.set_defaults(func=cmd_device)

    p = sub.add_parser("invite", help="send a connection request to another device")
    p.add_argument("peer_url", help="the other device's peer address, e.g. https://host:8476")
    p.add_argument("--offer", action="store_true",
                   help="offer this device as a worker instead of inviting the peer")
    p.add_argument("--purpose", help="what the workers will be used for")
    p.add_argument("--nthreads", type=int)
    p.add_argument("--memory-limit-gb", dest="memory_limit_gb", type=float)
    p.add_argument("--gpus", type=int)
    p.add_argument("--duration-hours", dest="duration_hours", type=float)
    p.add_argument("--requirement", dest="requirements", action="append",
                   help="a package the job needs on the worker (repeatable)")
    p.set_defaults(func=cmd_invite)

    p = sub.add_parser("requests", help="list connection requests")
    p.add_argument("--all", action="store_true", help="include decided and expired ones")
    p.add_argument("--direction", choices=["incoming", "outgoing"])
    p.set_defaults(func=cmd_requests)

    p = sub.add_parser("accept", help="accept a connection request")
    p.add_argument("request_id")
    p.add_argument("--kernel", help="kernelspec the worker runs in")
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser("reject", help="reject a connection request")
    p.add_argument("request_id")
    p.add_argument("--reason")
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser("devices", help="list paired devices")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("revoke", help="revoke a paired device (stop sharing)")
    p.add_argument("device", help="device ID (a unique prefix is enough) or name")
    p.set_defaults(func=cmd_revoke)

    p = sub.add_parser("cluster", help="show, start or stop this device's cluster")
    p.add_argument("action", nargs="?", default="show",
                   choices=["show", "start", "stop", "add-self"])
    p.add_argument("--kernel", help="add-self: kernelspec the local worker runs in")
    p.add_argument("--nthreads", type=int, default=1, help="add-self: worker threads")
    p.set_defaults(func=cmd_cluster)

    p = sub.add_parser("kernels", help="kernels (environments) a worker can run in")
    p.add_argument("--refresh", action="store_true")
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("ides", help="IDEs found on this device and their Python")
    p.set_defaults(func=cmd_ides)

    p = sub.add_parser("env", help="check or install what an environment needs")
    p.add_argument("action", choices=["check", "install"])
    p.add_argument("-r", "--requirement", dest="requirements", action="append", default=[],
                   help="an extra requirement of the job (repeatable)")
    p.add_argument("--kernel")
    p.add_argument("--ide")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("workloads", help="workloads installed here (train, sweep, ...)")
    p.set_defaults(func=cmd_workloads)

    p = sub.add_parser("run", help="run a workload on the cluster (this process owns the job)",
                       description="Run a workload; parameters as key=value (JSON values, "
                       "or text: Python objects as package.module:attribute).")
    p.add_argument("workload")
    p.add_argument("params", nargs="*", metavar="key=value")
    p.add_argument("--params-json", metavar="JSON", help="parameters as one JSON object")
    p.add_argument("--name", help="name shown in the job list")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="a Dask scheduler address (default: this device's cluster)")
    p.add_argument("--job-id", help=argparse.SUPPRESS)  # a job the server registered for us
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("jobs", help="jobs of every workload: list, cancel, remove")
    p.add_argument("action", nargs="?", default="list", choices=("list", "cancel", "remove"))
    p.add_argument("job", nargs="?", help="job ID (cancel, remove)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("demo", help="the local multi-device demo (starts its own devices)")
    p.add_argument("--devices", type=_demo_devices, default=3,
                   help="how many devices to start, the main one included (2-8, default 3)")
    p.add_argument("--workdir", help="where the demo devices keep their state")
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
    except (CliError, ServerNotFound) as err:
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
