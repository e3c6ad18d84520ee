"""Jobs the server starts itself (``POST workloads/{name}/run``), so the REST API, and with it
the panel or any HTTP client, can run a workload as the CLI and the magics do.

A workload runs where its Python objects are; a job started over HTTP has only JSON, so its
parameters are JSON values and ``package.module:attribute`` references to installed code. The
server checks them in its own environment (a clear 400 on a mistake, nothing started), registers
the job (owner ``server``), and runs ``parallalx run`` as a child process that adopts the job
and reports like any owner. The child's output goes to ``<home>/jobs/<id>.log``; if it exits
before the job has ended (no cluster, a crash), the job is marked failed with its last line.
Children are asked to cancel (SIGINT) when the server stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from ..devices import ApiError
from ..jobs import FINAL_STATES
from .job_registry import JobRegistry

log = logging.getLogger(__name__)


class JobSpawner:
    def __init__(self, registry: JobRegistry, home: Path) -> None:
        self.registry = registry
        self.home = home
        self.server_url = ""
        self.token = ""
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    async def run(self, workload: str, body: dict[str, Any]) -> dict[str, Any]:
        from ..workloads.base import require_references
        from ..workloads.registry import get

        params = body.get("params") or {}
        loop = asyncio.get_running_loop()

        def check() -> tuple[Any, dict[str, Any]]:
            wl = get(workload)
            require_references(wl.name, wl.parameters, params)
            return wl, wl.validate(dict(params))

        wl, checked = await loop.run_in_executor(None, check)  # WorkloadError: 400 or 404
        job_id = uuid.uuid4().hex[:12]
        name = body.get("name") or wl.job_name(checked)
        view = await self.registry.register({
            "id": job_id, "workload": workload, "name": str(name)[:200],
            "owner": {"kind": "server", "pid": os.getpid(), "host": socket.gethostname()[:255]},
        })
        logs = self.home / "jobs"
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{job_id}.log"
        # the token goes in the environment: a command line is readable by every local user.
        # `--option=value`: a value from the request that starts with "-" (a name "--help")
        # would otherwise be read as an option, and the job would fail however it is named
        cmd = [sys.executable, "-m", "parallalx_jupyter.cli", f"--url={self.server_url}",
               f"--home={self.home}", "run", workload,
               f"--params-json={json.dumps(params)}", f"--job-id={job_id}"]
        if body.get("scheduler"):
            cmd += [f"--scheduler={body['scheduler']}"]
        if body.get("name"):
            cmd += [f"--name={view['name']}"]  # as the registry cleaned it
        env = dict(os.environ, PARALLALX_JOB_OWNER="server", PARALLALX_TOKEN=self.token)
        try:
            with log_path.open("wb") as out:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, stdout=out, stderr=asyncio.subprocess.STDOUT, env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                )
        except OSError as err:
            await self._fail(job_id, f"could not start the job's process: {err}")
            raise ApiError(500, f"could not start the job's process: {err}") from None
        self.children[job_id] = proc
        task = asyncio.ensure_future(self._watch(job_id, proc, log_path))
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return view

    async def _watch(self, job_id: str, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        code = await proc.wait()
        self.children.pop(job_id, None)
        try:
            job = await self.registry.get(job_id)
        except ApiError:
            return
        if job["state"] in FINAL_STATES:
            return
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {code}"
        await self._fail(job_id, f"the job's process ended ({code}): {last[-2000:]}")

    async def _fail(self, job_id: str, message: str) -> None:
        try:
            await self.registry.update(job_id, {"state": "failed", "error": message})
        except ApiError:
            log.debug("job %s ended already", job_id)

    async def stop(self, grace: float = 10.0) -> None:
        """Ask every child to cancel its job (SIGINT), then make sure none outlives the server."""
        for proc in list(self.children.values()):
            if proc.returncode is None:
                proc.send_signal(signal.SIGINT)
        for proc in list(self.children.values()):
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                proc.kill()
