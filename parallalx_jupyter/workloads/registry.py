"""Finding workloads: every entry point in the ``parallalx_jupyter.workloads`` group.

parallalx's own (train, sweep, inference) are declared in its pyproject.toml like any
third-party one, so there is one mechanism and no built-in special case. A broken plugin is
reported by name (``broken()``) and never hides the others.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from typing import Any

from .base import UnknownWorkloadError, Workload, WorkloadError

GROUP = "parallalx_jupyter.workloads"
log = logging.getLogger(__name__)


def _load_all() -> tuple[dict[str, type[Workload]], dict[str, str]]:
    found: dict[str, type[Workload]] = {}
    broken: dict[str, str] = {}
    for ep in entry_points(group=GROUP):
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Workload)):
                raise TypeError(f"{ep.value} is not a Workload subclass")
            if getattr(cls, "name", None) != ep.name:
                raise TypeError(f"{ep.value}.name is {getattr(cls, 'name', None)!r}, "
                                f"but its entry point is {ep.name!r}")
        except Exception as err:  # a plugin's bug must not break the others
            broken[ep.name] = f"{type(err).__name__}: {err}"
            log.warning("workload %s (%s) cannot be loaded: %s", ep.name, ep.value, err)
            continue
        found.setdefault(ep.name, cls)
    return found, broken


def available() -> dict[str, type[Workload]]:
    """Workload classes by name (entry points are read each time: new installs show up)."""
    return _load_all()[0]


def broken() -> dict[str, str]:
    """Entry points that failed to load, with why."""
    return _load_all()[1]


def get(name: str) -> Workload:
    """A new instance of the workload called ``name``; WorkloadError if there is none."""
    found, bad = _load_all()
    if name in found:
        return found[name]()
    if name in bad:
        raise WorkloadError(f"workload {name!r} is installed but cannot be loaded: {bad[name]}")
    known = ", ".join(sorted(found)) or "none"
    raise UnknownWorkloadError(f"unknown workload {name!r}; available: {known}")


def describe_all() -> list[dict[str, Any]]:
    """Every workload as the API lists it (``id`` = name), loadable or not."""
    found, bad = _load_all()
    out = [{"id": n, **cls.describe(), "error": None} for n, cls in sorted(found.items())]
    out += [{"id": n, "name": n, "description": "", "parameters": {}, "error": why}
            for n, why in sorted(bad.items())]
    return out
