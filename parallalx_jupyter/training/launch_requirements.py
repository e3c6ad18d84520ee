"""A launched job's ``requirements``, checked and installed on each device before its ranks
start, with the environment machinery the accept flow uses (``environments.install.ensure``).

Each worker runs in the interpreter its device's user chose when accepting (a kernel's, an
IDE's), so installing into that worker's own ``sys.executable`` installs into the chosen
kernel. pip runs there with that device's own pip configuration (index, find-links, proxy),
as if its user had typed ``pip install``; a device that cannot install them fails the job at
once with its name and pip's reason (it is not a lost device, and is not retried).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from .errors import TrainingError


class RequirementsError(TrainingError):
    """A device could not provide the job's requirements (a user error: never retried)."""


def ensure_requirements_task(requirements: Sequence[str]) -> bytes:
    """Dask task on one worker: install what is missing or mismatched into this worker's
    interpreter; returns (as data) what was installed, ``{"installed": [...]}``."""
    from ..environments.install import ensure
    from ..wire import to_wire

    before = _versions(requirements)
    entries = asyncio.run(ensure(sys.executable, list(requirements)))
    changed = [f"{e['name']} {e['installed']}" for e in entries
               if before.get(str(e["name"]).lower()) != e["installed"]]
    return to_wire({"installed": changed})


def _versions(requirements: Sequence[str]) -> dict[str, Any]:
    from importlib import metadata

    from packaging.requirements import Requirement

    out: dict[str, Any] = {}
    for line in requirements:
        name = Requirement(line).name
        try:
            out[name.lower()] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name.lower()] = None
    return out


__all__ = ["RequirementsError", "ensure_requirements_task"]
