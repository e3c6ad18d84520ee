"""Connect to this device's own cluster as the main device (from a notebook, script or demo).

Only the main device's client certificate may drive the scheduler, and it lives in this
device's `home`, so a notebook on the main device can connect without any address or secret
being typed in; a notebook elsewhere passes its own `Client` to `train(client=...)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class NoClusterError(RuntimeError):
    """This device runs no cluster yet (invite a device, or `parallalx cluster start`)."""


def guard_main_process() -> None:
    """Put the pickle boundary (``_boundary.py``) in front of this process's TLS comms.

    Called by everything on the main device that talks to a cluster with device workers (the
    scheduler, every client parallalx opens); it only changes comms whose peer certificate
    names a parallalx device, so a user's own Dask cluster is unaffected.
    """
    from . import _boundary
    from ._guard import boundary_mode_for_main
    from .sanitize import sanitize_device_message

    _boundary.install(boundary_mode_for_main, sanitize_device_message)


def main_client(home: str | Path | None = None, timeout: float = 20.0, **kwargs: Any) -> Any:
    """A `distributed.Client` to this device's scheduler, authenticated as the main device."""
    from distributed import Client

    from ..client import default_home
    from .tls import ClusterCredentials

    cluster_dir = (Path(home).expanduser() if home else default_home()) / "cluster"
    try:
        state = json.loads((cluster_dir / "scheduler-state.json").read_text())
    except (OSError, ValueError):
        raise NoClusterError(
            f"no cluster has been started on this device ({cluster_dir}); invite a device or "
            "run `parallalx cluster start`"
        ) from None
    if state.get("status") != "running" or not state.get("address"):
        raise NoClusterError("this device's scheduler is not running (`parallalx cluster start`)")
    security = ClusterCredentials.from_files(cluster_dir).client_security()
    guard_main_process()
    return Client(state["address"], security=security, timeout=timeout, **kwargs)
