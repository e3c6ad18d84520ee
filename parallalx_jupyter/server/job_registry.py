"""The server's list of jobs: registration, progress, cancel requests, history.

Pure asyncio over :class:`~parallalx_jupyter.store.Store`, no tornado (handlers stay thin). The
owner of a job is whatever process runs it; it posts progress at most a few times a second and
a heartbeat every few seconds while quiet, so a job whose owner stopped reporting for
``stale_after`` seconds is shown as ``lost`` (its kernel died or its machine slept) without
rewriting what it last said: if the owner comes back, its next post makes the job live again.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

from .. import settings
from ..devices import ApiError
from ..jobs import ACTIVE_STATES, FINAL_STATES, RENAMED_STATES
from ..jobs.handle import OUTPUT_LINE_CHARS
from ..pairing import ProtocolError, _int_range, _optional, _str_max, clean_text, validate

Emit = Callable[[str, dict[str, Any]], None]

LOSS_KEEP = 400  # points stored per job; halved (every other point) when exceeded
LOSS_SHOWN = 200  # points returned: evenly spaced over the whole run
HISTORY_KEEP = 200  # ended jobs kept in the list
OUTPUT_KEEP = 500  # lines of output kept per job (GET jobs/{id} only; the list has none)
ID_PATTERN = r"[A-Za-z0-9_\-]{1,64}"


def _finite_or_none(v: Any) -> bool:
    return v is None or (
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    )


def _is_id(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(ID_PATTERN, v) is not None


PROGRESS_SPEC = {
    "step": (_optional(_int_range(0, 2**53)), False, "a non-negative integer or null"),
    "total": (_optional(_int_range(0, 2**53)), False, "a non-negative integer or null"),
    "fraction": (
        lambda v: v is None or (_finite_or_none(v) and 0 <= v <= 1), False, "a number 0-1 or null"
    ),
    "loss": (_finite_or_none, False, "a finite number or null"),
    "samples_per_s": (_finite_or_none, False, "a finite number or null"),
    "eta_s": (_finite_or_none, False, "a finite number or null"),
    "workers": (_optional(_int_range(0, 100_000)), False, "an integer or null"),
    "devices": (
        lambda v: v is None or (isinstance(v, list) and len(v) <= 64
                                and all(isinstance(d, str) and len(d) <= 200 for d in v)),
        False, "a list of at most 64 device names or null",
    ),
    "message": (_optional(_str_max(500)), False, "a string of at most 500 characters or null"),
}

OWNER_SPEC = {
    "kind": (lambda v: v in ("kernel", "cli", "server", "python"), True,
             "one of kernel, cli, server, python"),
    "pid": (_int_range(0, 2**31), True, "a process ID"),
    "host": (_str_max(255), True, "a host name"),
}

REGISTER_SPEC = {
    "id": (_is_id, True, f"a job ID matching {ID_PATTERN}"),
    "workload": (_is_id, True, "a workload name"),
    "name": (_str_max(200), True, "a string of at most 200 characters"),
    "owner": (lambda v: isinstance(v, dict), True, "an object {kind, pid, host}"),
}

UPDATE_SPEC = {
    # an owner of an earlier version may still say "restarting" (RENAMED_STATES)
    "state": (lambda v: v in ACTIVE_STATES + FINAL_STATES or v in RENAMED_STATES, False,
              f"one of {', '.join(ACTIVE_STATES + FINAL_STATES)}"),
    "progress": (lambda v: isinstance(v, dict), False, "an object"),
    "loss": (
        lambda v: isinstance(v, list) and len(v) <= 1000
        and all(_finite_or_none(x) and x is not None for x in v),
        False, "a list of at most 1000 finite numbers",
    ),
    "error": (_optional(_str_max(20_000)), False, "a string or null"),
    "output": (
        lambda v: isinstance(v, list) and len(v) <= OUTPUT_KEEP,
        False, f"a list of at most {OUTPUT_KEEP} lines",
    ),
}

OUTPUT_LINE_SPEC = {
    "rank": (_int_range(0, 1_000_000), True, "a rank number"),
    "device": (_str_max(200), True, "a device name (may be empty)"),
    "stream": (lambda v: v in ("stdout", "stderr"), True, "stdout or stderr"),
    "line": (_str_max(OUTPUT_LINE_CHARS), True,
             f"a string of at most {OUTPUT_LINE_CHARS} characters"),
}


def _check(obj: Any, spec: dict, where: str) -> dict[str, Any]:
    try:
        return validate(obj, spec, where)
    except ProtocolError as err:
        raise ApiError(400, err.message) from None


def _spread(points: list[float], n: int) -> list[float]:
    if len(points) <= n:
        return points
    step = (len(points) - 1) / (n - 1)
    return [points[round(i * step)] for i in range(n)]


class JobRegistry:
    """Jobs as the REST API shows them; every change is also a ``job-progress`` event."""

    def __init__(
        self, store: Any, emit: Emit, stale_after: float = settings.default("job_stale_after")
    ) -> None:
        self.store = store
        self.emit = emit
        self.stale_after = stale_after

    # ------------------------------------------------------------------ views
    def view(self, row: dict[str, Any], now: float | None = None,
             output: bool = False) -> dict[str, Any]:
        """The job as the API shows it; ``output``: with the lines its ranks printed (one
        job's view: the list leaves them out)."""
        now = time.time() if now is None else now
        state = RENAMED_STATES.get(row["state"], row["state"])  # stored by an earlier version
        if state in ACTIVE_STATES and now - row["updated_at"] > self.stale_after:
            state = "lost"
        return {
            "id": row["id"],
            "workload": row["workload"],
            "name": row["name"],
            "state": state,
            "owner": row["owner"],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "finished_at": row["finished_at"],
            "progress": {k: row["progress"].get(k) for k in PROGRESS_SPEC},
            "loss_history": _spread(row["loss_history"], LOSS_SHOWN),
            "error": row["error"],
            "cancel_requested": bool(row["cancel_requested"]),
            **({"output": row.get("output") or []} if output else {}),
        }

    def _event(self, job: dict[str, Any]) -> None:
        p = job["progress"]
        data = {"job_id": job["id"], "workload": job["workload"], "name": job["name"],
                "state": job["state"]}
        data.update({k: p[k] for k in ("step", "total", "loss", "samples_per_s", "eta_s")
                     if p.get(k) is not None})
        self.emit("job-progress", data)

    async def list(self) -> list[dict[str, Any]]:
        now = time.time()
        return [self.view(r, now) for r in await self.store.list_jobs(HISTORY_KEEP + 100)]

    async def get(self, job_id: str) -> dict[str, Any]:
        row = await self.store.get_job(job_id)
        if row is None:
            raise ApiError(404, f"no job {job_id!r}")
        return self.view(row, output=True)

    # ------------------------------------------------------------------ owner side
    async def register(self, body: Any) -> dict[str, Any]:
        body = _check(body, REGISTER_SPEC, "body")
        owner = _check(body["owner"], OWNER_SPEC, "owner")
        # shown in every job list, like a peer's name: no bidi overrides or control characters
        name = clean_text(body["name"], 200)
        if not name:
            raise ApiError(400, "field 'name' has no visible text once control and format "
                                "characters are removed")
        job = {"id": body["id"], "workload": body["workload"], "name": name,
               "state": "pending", "owner": owner, "now": time.time()}
        if not await self.store.insert_job(job):
            raise ApiError(409, f"a job with ID {body['id']!r} exists already")
        await self.store.trim_jobs(HISTORY_KEEP)
        view = await self.get(body["id"])
        self._event(view)
        return view

    async def update(self, job_id: str, body: Any) -> dict[str, Any]:
        """A progress post from the job's owner; returns ``{"cancel_requested": bool}``."""
        body = _check(body, UPDATE_SPEC, "body")
        progress = _check(body["progress"], PROGRESS_SPEC, "progress") if "progress" in body \
            else None
        lines = [_check(line, OUTPUT_LINE_SPEC, f"output[{i}]")
                 for i, line in enumerate(body.get("output") or [])]
        conflict: list[str] = []

        def change(row: dict[str, Any]) -> dict[str, Any] | None:
            if row["state"] in FINAL_STATES:
                conflict.append(row["state"])
                return None
            now = time.time()
            out: dict[str, Any] = {"updated_at": now}
            state = RENAMED_STATES.get(body.get("state"), body.get("state"))
            if state:
                if row["cancel_requested"] and state in ("running", "recovering", "pending"):
                    state = "cancelling"  # the owner has not seen the request yet
                out["state"] = state
                if state in FINAL_STATES:
                    out["finished_at"] = now
            if progress is not None:
                out["progress"] = {**row["progress"], **progress}
            if body.get("loss"):
                points = row["loss_history"] + [float(x) for x in body["loss"]]
                while len(points) > LOSS_KEEP:
                    points = points[::2]
                out["loss_history"] = points
            if "error" in body:
                out["error"] = body["error"]
            if lines:
                out["output"] = ((row.get("output") or []) + lines)[-OUTPUT_KEEP:]
            return out

        row = await self.store.modify_job(job_id, change)
        if row is None:
            raise ApiError(404, f"no job {job_id!r}")
        if conflict:
            raise ApiError(409, f"job {job_id} has ended ({conflict[0]})")
        view = self.view(row)
        self._event(view)
        return {"cancel_requested": view["cancel_requested"]}

    # ------------------------------------------------------------------ user side
    async def cancel(self, job_id: str) -> dict[str, Any]:
        ended: list[str] = []

        def change(row: dict[str, Any]) -> dict[str, Any] | None:
            if row["state"] in FINAL_STATES:
                ended.append(row["state"])
                return None
            return {"cancel_requested": 1, "state": "cancelling"}

        row = await self.store.modify_job(job_id, change)
        if row is None:
            raise ApiError(404, f"no job {job_id!r}")
        if ended:
            raise ApiError(409, f"job {job_id} has already ended ({ended[0]})")
        view = self.view(row)
        self._event(view)
        return view

    async def delete(self, job_id: str) -> None:
        view = await self.get(job_id)
        if view["state"] not in (*FINAL_STATES, "lost"):
            raise ApiError(409, f"job {job_id} is still {view['state']}: cancel it first")
        await self.store.delete_job(job_id)
        self.emit("job-progress", {"job_id": view["id"], "workload": view["workload"],
                                   "name": view["name"], "state": "removed"})
