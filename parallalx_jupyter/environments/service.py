"""The environment step as one object the server, the REST API and the cluster share.

It turns a user's selection (a kernelspec, or an IDE whose configured interpreter we could read)
into the Python interpreter a worker will run in, and prepares that interpreter for a main
device: the main device's versions of the cluster-critical packages plus a job's requirements,
diffed by running the interpreter itself and installed with its own pip.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import EnvironmentStepError
from .ides import detect_ides
from .install import ensure
from .kernels import KernelCatalog
from .requirements import diff, inspect_environment, pending, requirement_set
from .search_roots import SearchRoots

Emit = Callable[[str, dict[str, Any]], None]


class SelectionError(EnvironmentStepError):
    """The selected kernel or IDE cannot host a worker (the message says why)."""


class EnvironmentService:
    def __init__(self, emit: Emit, workspace: Path | None = None) -> None:
        self.emit = emit
        self.workspace = workspace
        self.catalog = KernelCatalog()

    async def kernels(self, refresh: bool = False) -> list[dict[str, Any]]:
        return [k.to_dict() for k in await self.catalog.kernels(refresh=refresh)]

    async def ides(self) -> list[dict[str, Any]]:
        roots = SearchRoots.from_environment(self.workspace)
        return [ide.to_dict() for ide in await detect_ides(roots)]

    async def resolve_python(self, selection: Mapping[str, Any]) -> str:
        """Interpreter for a selection: a kernel wins, then an IDE's configured interpreter,
        else the Python running this server."""
        kernel = selection.get("kernel")
        if kernel:
            try:
                info = await self.catalog.get(str(kernel))
            except KeyError:
                raise SelectionError(f"no kernel named {kernel!r} on this device") from None
            if not info.selectable or not info.interpreter:
                raise SelectionError(f"kernel {kernel!r} cannot run a worker: {info.reason}")
            return info.interpreter
        ide_id = selection.get("ide")
        if ide_id:
            for ide in await self.ides():
                if ide["id"] == ide_id:
                    if not ide["found"]:
                        raise SelectionError(f"{ide['name']} was not found on this device")
                    if not ide["interpreter"]:
                        raise SelectionError(
                            f"{ide['name']} has no Python interpreter configured that parallalx "
                            "can read; pick a kernel instead"
                        )
                    return str(ide["interpreter"])
            raise SelectionError(f"unknown IDE {ide_id!r}")
        return sys.executable

    async def check(
        self, python: str, extra: Iterable[str] = (),
        main_versions: Mapping[str, str | None] | None = None,
    ) -> dict[str, Any]:
        required = requirement_set(extra, main_versions=main_versions)
        env = await inspect_environment(python, [r.name for r in required])
        entries = diff(required, env.packages, markers=env.markers)
        return {
            "python": python,
            "python_version": env.python_version,
            "diff": [dict(e) for e in entries],
            "to_install": [dict(e) for e in pending(entries)],
        }

    async def install(
        self, python: str, extra: Iterable[str] = (),
        main_versions: Mapping[str, str | None] | None = None, peer_id: str = "",
    ) -> dict[str, Any]:
        """Install what is missing or mismatched, reporting per-package progress as events."""

        def on_event(event: Mapping[str, Any]) -> None:
            self.emit("install-progress", {
                "peer_id": peer_id,
                "peer_name": "",
                "package": str(event.get("package", "")),
                "phase": str(event.get("phase", "")),
                "message": str(event.get("message", ""))[:500],
            })

        required = requirement_set(extra, main_versions=main_versions)
        final = await ensure(python, required, on_event=on_event)
        return {"python": python, "diff": [dict(e) for e in final], "to_install": []}

    async def prepare_for_main(
        self, python: str, main_versions: dict[str, str], requirements: list[str], peer_id: str
    ) -> None:
        """What a worker device runs before starting a worker for `peer_id` (raises on failure,
        so no worker is started)."""
        await self.install(python, requirements, main_versions, peer_id)
