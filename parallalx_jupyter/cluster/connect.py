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
    """This device runs no cluster yet (accept a device, or start one with `add-self`)."""


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
            f"no cluster has been started on this device ({cluster_dir}); accept a device or "
            "run `parallalx cluster add-self`"
        ) from None
    if state.get("status") != "running" or not state.get("address"):
        raise NoClusterError("this device's scheduler is not running (`parallalx cluster start`)")
    security = ClusterCredentials.from_files(cluster_dir).client_security()
    return Client(state["address"], security=security, timeout=timeout, **kwargs)
