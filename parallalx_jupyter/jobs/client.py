"""Which Dask cluster a job runs on: the one the caller names, else this device's own; and
what its devices are called."""

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
        try:
            return Client(client, security=security, set_as_default=False), True
        except (OSError, TimeoutError) as err:  # Dask's 55-line traceback says no more
            raise NoClientError(f"could not reach the Dask scheduler at {client}: {err}") \
                from None
    if isinstance(client, Client):
        return client, False
    if hasattr(client, "scheduler_address"):  # a cluster object (LocalCluster, ...)
        return Client(client, set_as_default=False), True
    raise TypeError(
        f"client= takes a distributed.Client, a cluster or a scheduler address "
        f"('tls://host:8786'), not {type(client).__name__}"
    )


def device_names(api: Any = None, timeout: float = 5.0) -> dict[str, str]:
    """Device ID -> name, for this device and every device paired with it, from this device's
    server (``api``: an ``ApiClient``; None finds the server as the job reporter does).

    parallalx names a device's Dask workers by its ID, which means nothing to people; a job
    that loses a device says which by this name. Raises ``ClientError``/``ServerNotFound``
    when there is no server to ask (callers fall back to the workers' own names).
    """
    from ..client import ApiClient, locate_server

    if api is None:
        ref = locate_server()
        api = ApiClient(ref.url, ref.token, timeout=timeout)
    names = {str(d["id"]): str(d["name"]) for d in api.call("GET", "devices")
             if d.get("id") and d.get("name")}
    me = api.call("GET", "device")
    if me.get("id") and me.get("name"):
        names[str(me["id"])] = str(me["name"])
    return names
