"""Which Dask cluster a job runs on: the one the caller names, else this device's own."""

from __future__ import annotations

import contextlib
from typing import Any


class NoClientError(RuntimeError):
    """No Dask client given and none to be found."""


def resolve_client(client: Any, security: Any = None) -> tuple[Any, bool]:
    """``(client, owned)``: the given one, a new one for an address, or this device's cluster.

    Without ``client``: the process's default Dask client if one exists, otherwise this
    device's own parallalx cluster as the main device (``cluster.connect.main_client``), which
    the job closes when it ends (``owned``).
    """
    from distributed import Client, default_client

    from ..cluster.connect import guard_main_process

    guard_main_process()  # whichever cluster: nothing a device sends is unpickled here
    if client is None:
        with contextlib.suppress(ValueError):
            return default_client(), False
        from ..cluster.connect import NoClusterError, main_client

        try:
            return main_client(), True
        except NoClusterError as exc:
            raise NoClientError(
                f"no Dask client given and no parallalx cluster on this device: {exc}. Pass "
                "client= (a Client or a scheduler address), or pair a device first"
            ) from None
    if isinstance(client, str):
        return Client(client, security=security, set_as_default=False), True
    return client, False
