"""The environment step (flow 3): kernels, IDEs, requirement diff, pip install with progress.

Pure asyncio library code, no tornado: REST handlers, the CLI and events call into it.

* :mod:`.kernels`      — kernelspecs, each interpreter probed for its Python version
* :mod:`.ides`         — IDE detection from :mod:`.ide_table`, versions, configured interpreters
* :mod:`.requirements` — the requirement set, ``inspect`` of a target interpreter, ``diff``
* :mod:`.install`      — ``pip install`` into the chosen interpreter with progress events
"""

from __future__ import annotations

from .errors import (
    EnvironmentStepError,
    InstallCancelled,
    InstallError,
    InstallTimeout,
    InterpreterError,
    RequirementError,
    UnknownKernelError,
)
from .ides import IdeInfo, detect_ides
from .install import Installer, InstallResult, ensure, install
from .kernels import KernelCatalog, KernelInfo, list_kernels
from .pip_progress import InstallEvent
from .requirements import (
    CLUSTER_PACKAGES,
    DiffEntry,
    InspectedEnvironment,
    cluster_pins,
    diff,
    inspect,
    inspect_environment,
    local_versions,
    parse_requirements,
    pending,
    requirement_set,
)
from .search_roots import SearchRoots

__all__ = [
    "CLUSTER_PACKAGES",
    "DiffEntry",
    "EnvironmentStepError",
    "IdeInfo",
    "InspectedEnvironment",
    "InstallCancelled",
    "InstallError",
    "InstallEvent",
    "InstallResult",
    "InstallTimeout",
    "Installer",
    "InterpreterError",
    "KernelCatalog",
    "KernelInfo",
    "RequirementError",
    "SearchRoots",
    "UnknownKernelError",
    "cluster_pins",
    "detect_ides",
    "diff",
    "ensure",
    "inspect",
    "inspect_environment",
    "install",
    "list_kernels",
    "local_versions",
    "parse_requirements",
    "pending",
    "requirement_set",
]
