"""Plain text of the REST API's answers: the one formatting module of the CLI and the magics.

`parallalx devices` and `%parallalx devices` (a widget's `text/plain`), `parallalx requests` and
a request card, `parallalx jobs` and `%parallalx jobs` print the same lines, made here. Text
from other devices (names, purposes, messages) is data: it goes through `plain()` (control and
format characters such as bidi overrides or terminal escapes removed, whitespace collapsed,
length capped) before it reaches a terminal or a widget.

Sits with the core (`client`): imports nothing else of the package.
"""

from __future__ import annotations

import math
import re
import time
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

NAME_LIMIT = 64
TEXT_LIMIT = 300
ID_LIMIT = 80

# ---------------------------------------------------------------------------- building blocks


def plain(value: Any, limit: int = TEXT_LIMIT) -> str:
    """`value` as one line of harmless plain text: no control/format characters (bidi overrides,
    zero-width joiners, escape sequences), whitespace collapsed, at most `limit` characters."""
    if value is None:
        return ""
    kept = []
    for ch in str(value)[: limit * 4 + 16]:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            kept.append(" " if ch in "\t\n\r\u2028\u2029" else "")
        else:
            kept.append(ch)
    text = " ".join("".join(kept).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_TERMINAL_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-_])")


def printable(value: Any) -> str:
    """Text another device printed, safe to show here as lines: terminal sequences (colours,
    cursor moves, titles) and other control or format characters removed, line breaks and
    tabs kept, indentation kept (unlike :func:`plain`)."""
    kept = []
    for ch in _TERMINAL_SEQUENCE.sub("", str(value).replace("\r\n", "\n")):
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            kept.append(ch)
        elif ch == "\r":
            kept.append("\n")  # a progress bar's redraws: one line each
    return "".join(kept)


def job_output_text(job: dict[str, Any]) -> str:
    """`jobs output ID`: the lines a job's ranks printed, each after its rank and device."""
    from .jobs.handle import output_prefix

    lines = job.get("output") or []
    if not lines:
        return f"{plain(job.get('workload'), 40)} job {plain(job.get('id'), 64)}: no output yet"
    return "\n".join(f"{output_prefix(int(x.get('rank', 0)), plain(x.get('device'), 200))}"
                     f"{printable(x.get('line', ''))}" for x in lines)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], empty: str = "(none)") -> str:
    """Left-aligned columns two spaces apart; `empty` when there are no rows."""
    if not rows:
        return empty
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def eta(seconds: Any) -> str:
    """Seconds left as `42s`, `3m 05s` or `2h 03m`; `-` when unknown. The panel's
    `jobEtaText` (labextension/src/models/jobViews.ts) writes the same."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not math.isfinite(seconds) or seconds < 0:
        return "-"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def rate(per_s: Any) -> str:
    """A throughput (samples/s) as a whole number with thousands separators (`0.52` below
    10); `-` if unknown. The panel's `jobSpeedText` writes the same."""
    if isinstance(per_s, bool) or not isinstance(per_s, (int, float)) \
            or not math.isfinite(per_s) or per_s < 0:
        return "-"
    return f"{per_s:.2f}" if per_s < 10 else f"{int(per_s + 0.5):,}"


def speed_eta(p: dict[str, Any]) -> str:
    """A job's speed and ETA as every Python surface shows them (the CLI's job line, the
    notebook's dashboards): `1,234 samples/s · ETA 1m 05s`. Both are the values the job
    computed once and smoothed (`jobs.speed`); nothing here recomputes them."""
    return f"{rate(p.get('samples_per_s'))} samples/s · ETA {eta(p.get('eta_s'))}"


def countdown(expires_at: float | None, now: float | None = None) -> str:
    """`expires in 4m 59s`, `expired`, or empty without an expiry."""
    if not expires_at:
        return ""
    left = int(expires_at - (now or time.time()))
    if left <= 0:
        return "expired"
    return f"expires in {left // 60}m {left % 60:02d}s"


def when(ts: float | None) -> str:
    """A past time stamp as local `YYYY-MM-DD HH:MM`; `-` without one."""
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def short_id(device: dict[str, Any]) -> str:
    full = plain(device.get("id_display") or device.get("id"), ID_LIMIT)
    return full[:15] + "…" if len(full) > 16 else full


# ---------------------------------------------------------------------------- requests


def pretty_code(code: str | None) -> str:
    code = plain(code, 12)
    return f"{code[:3]} {code[3:]}" if code else ""


_ASK_LABELS = {
    "nthreads": ("threads", ""),
    "memory_limit_gb": ("memory", " GB"),
    "gpus": ("GPUs", ""),
    "duration_hours": ("for", " h"),
}


def asks_parts(asks: dict[str, Any] | None) -> tuple[str, list[str]]:
    """(purpose, ["threads 2", "memory 4 GB", ...]) of what a request asks for."""
    asks = asks or {}
    parts = []
    for key, value in list(asks.items())[:20]:
        if key == "purpose" or value is None or value == [] or value == {} or value == "":
            continue
        if isinstance(value, list | tuple):
            value = ", ".join(plain(v, 64) for v in value[:20]) + (" …" if len(value) > 20 else "")
        elif isinstance(value, dict):  # `cluster`: a main device's scheduler port and CA
            value = _as_words(value)
        label, unit = _ASK_LABELS.get(key, (plain(key, 32), ""))
        parts.append(f"{label} {plain(value, 200)}{unit}")
    return plain(asks.get("purpose") or "run training workers"), parts


def _as_words(value: Any) -> str:
    """An object a request asks for, as words (`(scheduler port 34489, ca fingerprint ab12)`),
    not a Python dict's repr, in every surface that shows a request."""
    if not isinstance(value, dict):
        return plain(value, 80)
    return "(" + ", ".join(f"{plain(str(k).replace('_', ' '), 32)} {_as_words(v)}"
                           for k, v in list(value.items())[:10]) + ")"


def peer_name(request: dict[str, Any]) -> str:
    return plain((request.get("peer") or {}).get("name") or "(unnamed device)", NAME_LIMIT)


def request_title(request: dict[str, Any]) -> tuple[str, str]:
    """(before, after) the peer's name in a request's title."""
    incoming = request.get("direction") == "incoming"
    if request.get("kind") == "offer":
        return ("", " offers to run training workers for this device") if incoming else (
            "Offer to ", " to run training workers for it")
    return ("", " invites this device to run training workers for it") if incoming else (
        "Invitation to ", " to run training workers for this device")


def request_text(request: dict[str, Any], error: str | None = None) -> str:
    """One connection request: who asks, what, the verification code, the expiry."""
    before, after = request_title(request)
    purpose, parts = asks_parts(request.get("asks"))
    peer = request.get("peer") or {}
    lines = [
        f"{before}{peer_name(request)}{after}: {plain(request.get('state'), 20)}",
        f"  request:  {plain(request.get('id'), ID_LIMIT)}",
        f"  device:   {plain(peer.get('id_display'), ID_LIMIT)}",
        "  asks:     " + ", ".join([purpose, *parts]),
    ]
    if request.get("code"):
        lines.append(f"  code:     {pretty_code(request['code'])}   "
                     "(must match the code on the other device)")
    if request.get("state") == "pending":
        lines.append(f"  expires:  {countdown(request.get('expires_at')) or '-'}")
    if error:
        lines.append(f"  error:    {plain(error)}")
    return "\n".join(lines)


def requests_text(
    requests: Iterable[dict[str, Any]], errors: dict[str, str | None] | None = None,
    empty: str = "No open connection requests.",
) -> str:
    errors = errors or {}
    return "\n\n".join(request_text(r, errors.get(r.get("id", ""))) for r in requests) or empty


def incomplete_line(count: int) -> str:
    """One line about requests opened but never completed (not listed as requests)."""
    what = "1 incomplete request" if count == 1 else f"{count} incomplete requests"
    return (f"{what}: opened by another device but never completed (a failed pairing, or "
            "someone probing this device); not listed above")


# ---------------------------------------------------------------------------- nearby


NEARBY_EMPTY = ("No devices found nearby. Discovery lists devices on this local network that "
                "announce themselves (discoverable on) where multicast works; invite others "
                "by URL.")
NEARBY_NOTE = ("An announcement proves nothing: compare the verification code on both screens "
               "before the other user accepts.")


def invite_command(url: str, prog: str = "parallalx") -> str:
    return f"{prog} invite {plain(url, 100)}"


def nearby_text(rows: Iterable[dict[str, Any]], prog: str = "parallalx") -> str:
    """Devices heard on the network: name, ID prefix, address, and the command that invites
    each (its first address; the others are listed)."""
    lines = []
    for row in rows:
        urls = [plain(u, 100) for u in row.get("urls") or []][:8]
        if not urls:
            continue
        addresses = ", ".join(plain(a, 40) for a in (row.get("addresses") or [])[:8])
        paired = "  (paired)" if row.get("paired") else ""
        lines.append(f"{plain(row.get('name'), NAME_LIMIT)}  {short_id(row)}  "
                     f"{addresses}:{plain(row.get('port'), 6)}{paired}")
        lines.append(f"  {invite_command(urls[0], prog)}")
    if not lines:
        return NEARBY_EMPTY
    return "\n".join([*lines, "", NEARBY_NOTE])


# ---------------------------------------------------------------------------- devices


def granted_text(device: dict[str, Any]) -> str:
    """What the grant gives: threads, memory, GPUs (the limits accepted with the request)."""
    asks = (device.get("grant") or {}).get("asks") or {}
    parts = []
    if asks.get("nthreads"):
        parts.append(f"{plain(asks['nthreads'], 6)} threads")
    if asks.get("memory_limit_gb"):
        parts.append(f"{plain(asks['memory_limit_gb'], 8)} GiB")
    if asks.get("gpus"):
        parts.append(f"{plain(asks['gpus'], 4)} GPUs")
    return ", ".join(parts) or ("default limits" if device.get("grant") else "-")


def worker_text(device: dict[str, Any], cluster: dict[str, Any] | None) -> str:
    """The worker this pairing runs: the peer's workers in our cluster (peer is a worker), or
    our worker for the peer (peer is our main device)."""
    if cluster is None:
        return "?"
    if device.get("role") == "worker":
        n = sum(1 for w in cluster.get("workers") or [] if w.get("device_id") == device.get("id"))
        return f"{n} running" if n else "none"
    entry = next((s for s in cluster.get("serving") or []
                  if s.get("main_id") == device.get("id")), None)
    return plain(entry.get("state"), 30) if entry else "none"


def devices_text(
    devices: Iterable[dict[str, Any]], cluster: dict[str, Any] | None = None
) -> str:
    """Paired devices, one line each; `cluster` (`GET cluster`) gives the WORKER column."""
    rows = [[plain(d.get("name"), NAME_LIMIT), short_id(d), plain(d.get("role"), 20),
             plain(d.get("state"), 20), granted_text(d), worker_text(d, cluster),
             when(d.get("paired_at"))]
            for d in devices]
    return table(rows, ["NAME", "DEVICE ID", "ROLE", "STATE", "GRANTED", "WORKER", "PAIRED"],
                 empty="No paired devices.")


def revoked_text(device: dict[str, Any]) -> str:
    return f"revoked {plain(device.get('name'), NAME_LIMIT)} [{plain(device.get('id_display'))}]"


def resources_text(profile: dict[str, Any] | None) -> str:
    p = profile or {}
    acc = p.get("accelerators") or {}
    gpus = ", ".join(plain(d.get("name"), 40) for d in acc.get("cuda") or []) or (
        "MPS" if acc.get("mps") else "none")
    memory = p.get("memory_bytes")
    mem = f"{memory / 2**30:.1f} GiB" if isinstance(memory, int | float) else "?"
    return f"{plain(p.get('cpu_cores'), 8) or '?'} cores, {mem}, GPUs: {gpus}"


def device_text(info: dict[str, Any]) -> str:
    """This device (`GET device`): name, ID, peer URLs, resources, OS."""
    p = info.get("profile") or {}
    return "\n".join([
        f"name:       {plain(info.get('name'), NAME_LIMIT)}",
        f"device ID:  {plain(info.get('id_display'))}",
        f"peer URLs:  {', '.join(plain(u, 200) for u in info.get('peer_urls') or []) or '-'}",
        f"resources:  {resources_text(p)}",
        f"os:         {plain(p.get('os'))} ({plain(p.get('machine'))}), "
        f"Python {plain(p.get('python'))}",
    ])


def status_text(status: dict[str, Any]) -> str:
    """`%parallalx status`: this device, the server the kernel talks to, counts."""
    info, server = status.get("device") or {}, status.get("server") or {}
    counts = status.get("counts") or {}
    return "\n".join([
        f"this device: {plain(info.get('name'), NAME_LIMIT)}  [{plain(info.get('id_display'))}]",
        f"peer URLs:   {', '.join(plain(u, 200) for u in info.get('peer_urls') or []) or '-'}",
        f"resources:   {resources_text(info.get('profile'))}",
        f"server:      {plain(server.get('url'), 200)} (found by: "
        f"{plain(server.get('found_by'), 40)})",
        f"paired:      {counts.get('paired', 0)} device(s); open requests: "
        f"{counts.get('incoming', 0)} incoming, {counts.get('outgoing', 0)} outgoing",
    ])


# ---------------------------------------------------------------------------- cluster, environments


def cluster_text(state: dict[str, Any]) -> str:
    """`GET cluster`: the scheduler, the workers per device, the main devices this one serves."""
    lines = [
        f"scheduler:  {plain(state.get('scheduler_address')) or '(not running)'}",
        f"dashboard:  {plain(state.get('dashboard_link')) or '-'}",
        f"CA:         {plain(state.get('ca_fingerprint')) or '-'}",
    ]
    # one row per device, named: a worker's own address (tls://...) or its raw ID would be a
    # second way of naming a device next to `devices` (`device_id_display`: the ID as
    # `parallalx devices` shows it, where the caller knows it)
    by_device: dict[str, list[dict[str, Any]]] = {}
    for w in state.get("workers") or []:
        by_device.setdefault(str(w.get("device_id")), []).append(w)
    rows = []
    for workers in by_device.values():
        w = workers[0]
        threads = sum(x["nthreads"] for x in workers if isinstance(x.get("nthreads"), int))
        rows.append([plain(w.get("device_name") or "(unknown device)", NAME_LIMIT)
                     + (" (this device)" if w.get("this_device") else ""),
                     short_id({"id_display": w.get("device_id_display"),
                               "id": w.get("device_id")}),
                     len(workers), threads or "-"])
    lines.append("workers:\n" + table(rows, ["DEVICE", "DEVICE ID", "WORKERS", "THREADS"]))
    for refused in state.get("refused_joins") or []:
        who = plain(refused.get("device_name") or "(unknown device)", NAME_LIMIT)
        lines.append(f"refused: {who} [{short_id({'id': refused.get('device_id')})}]: "
                     f"{plain(refused.get('reason'))}")
    own = state.get("own_worker")
    if own and own.get("state") != "running":  # once in, it is a row of the table above
        lines.append(f"this device's worker: {plain(own.get('state'), 30)}"
                     + (f" ({plain(own['message'])})" if own.get("message") else ""))
    for entry in state.get("serving") or []:
        main = plain(entry.get("main_name") or "(unknown device)", NAME_LIMIT)
        main_id = short_id({"id_display": entry.get("main_id_display"),
                            "id": entry.get("main_id")})
        lines.append(f"serving main device {main} [{main_id}]: "
                     f"{plain(entry.get('state'), 30)}"
                     + (f" ({plain(entry['message'])})" if entry.get("message") else ""))
    return "\n".join(lines)


def kernels_text(kernels: Iterable[dict[str, Any]]) -> str:
    return table([[k["name"], k["language"], k.get("python_version") or "-",
                   "yes" if k["selectable"] else f"no: {k.get('reason')}",
                   k.get("interpreter") or "-"] for k in kernels],
                 ["KERNEL", "LANGUAGE", "PYTHON", "SELECTABLE", "INTERPRETER"])


def ides_text(ides: Iterable[dict[str, Any]]) -> str:
    return table([[i["id"], i["name"], i.get("version") or "-", i.get("interpreter") or "-"]
                  for i in ides if i["found"]], ["ID", "IDE", "VERSION", "PYTHON"])


def environment_text(result: dict[str, Any]) -> str:
    """`POST environment/check|install`: the interpreter and what each package needs."""
    rows = [[e["name"], e["required"] or "any", e["installed"] or "-", e["action"]]
            for e in result["diff"]]
    return f"python: {result['python']}\n" + table(
        rows, ["PACKAGE", "REQUIRED", "INSTALLED", "ACTION"])


# ---------------------------------------------------------------------------- jobs, workloads


def job_progress(job: dict[str, Any]) -> str:
    """The PROGRESS column: `step/total (fraction)`."""
    p = job.get("progress") or {}
    if p.get("total"):
        text = f"{p.get('step') or 0}/{p['total']}"
        if p.get("fraction") is not None:
            text += f" ({p['fraction']:.0%})"
        return text
    return "-" if p.get("step") is None else str(p["step"])


def progress_text(p: dict[str, Any]) -> str:
    """A summarized progress record (`jobs.reporter.summarize`) as one line: the workload's
    message or step/total, loss, samples/s, ETA."""
    parts = [plain(p.get("message")) or (f"{p.get('step') or 0}/{p['total']}"
                                         if p.get("total") else "")]
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    if p.get("samples_per_s") is not None or p.get("eta_s") is not None:
        parts.append(speed_eta(p))
    return " · ".join(x for x in parts if x)


def jobs_table(jobs: Sequence[dict[str, Any]]) -> str:
    """The server's job list (``GET jobs``) as one line per job."""
    rows = []
    for j in jobs:
        p = j.get("progress") or {}
        loss = p.get("loss")
        state = plain(j["state"], 20)
        if state == "recovering" and p.get("message"):  # which device was lost, and why
            state = f"recovering: {plain(p['message'], 70)}"
        elif state == "cancelled":  # the user's own choice, in words: not an error
            state = plain(p.get("message"), 70) or "cancelled by the user"
        progress = job_progress(j)
        if progress == "-" and state == "running" and p.get("message"):  # the phase
            progress = plain(p["message"], 40)
        rows.append([
            j["id"], j["workload"], plain(j["name"], 40), state, progress,
            "-" if loss is None else f"{loss:.4g}",
            rate(p.get("samples_per_s")),
            eta(p.get("eta_s")),
            f"{j['owner']['kind']} {j['owner']['pid']}",
        ])
    return table(rows, ["JOB", "WORKLOAD", "NAME", "STATE", "PROGRESS", "LOSS", "SAMPLES/S",
                        "ETA", "OWNER"])


def workloads_table(workloads: Sequence[dict[str, Any]]) -> str:
    rows = []
    for w in workloads:
        props = (w.get("parameters") or {}).get("properties", {})
        required = set((w.get("parameters") or {}).get("required", []))
        names = [f"{k}*" if k in required else k for k in props]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        about = plain(w["error"]) if w["error"] else plain(w["description"], 70)
        rows.append([w["name"], about, shown])
    return table(rows, ["WORKLOAD", "DESCRIPTION", "PARAMETERS (* required)"])
