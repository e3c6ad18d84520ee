"""Jobs and workloads as plain-text tables, for the CLI and the magics alike."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in cells)


def eta(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
        return "-"
    s = int(seconds)
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def progress(job: dict[str, Any]) -> str:
    p = job.get("progress") or {}
    if p.get("total"):
        text = f"{p.get('step') or 0}/{p['total']}"
        if p.get("fraction") is not None:
            text += f" ({p['fraction']:.0%})"
        return text
    return "-" if p.get("step") is None else str(p["step"])


def jobs_table(jobs: Sequence[dict[str, Any]]) -> str:
    """The server's job list (``GET jobs``) as one line per job."""
    rows = []
    for j in jobs:
        p = j.get("progress") or {}
        loss = p.get("loss")
        rows.append([
            j["id"], j["workload"], j["name"][:40], j["state"], progress(j),
            "-" if loss is None else f"{loss:.4g}",
            "-" if p.get("samples_per_s") is None else f"{p['samples_per_s']:,.0f}",
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
        rows.append([w["name"], w["error"] or w["description"][:70], shown])
    return table(rows, ["WORKLOAD", "DESCRIPTION", "PARAMETERS (* required)"])
