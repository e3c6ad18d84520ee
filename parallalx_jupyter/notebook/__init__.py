"""The notebook surface: `%parallalx` magics, live widgets, and the kernel-side REST client.

    %load_ext parallalx_jupyter
    %parallalx --help

Python API: `connect()` returns the `Connection` to this device's server (the one this kernel
belongs to, else `PARALLALX_URL`/`PARALLALX_TOKEN`, else `<home>/server.json`); the widgets
(`Overview`, `Inbox`, `RequestCard`, `DeviceTable`, `StatusView`) take it as their first argument.
"""

from __future__ import annotations

from typing import Any

from .api import ClientError, Connection, EventStream, ServerNotFound, connect, disconnect

__all__ = [
    "ClientError",
    "Connection",
    "DeviceTable",
    "EventStream",
    "Inbox",
    "Overview",
    "RequestCard",
    "ServerNotFound",
    "StatusView",
    "connect",
    "disconnect",
    "load_ipython_extension",
    "unload_ipython_extension",
]

_WIDGETS = ("DeviceTable", "Inbox", "Overview", "RequestCard", "StatusView")


def __getattr__(name: str) -> Any:  # widgets import ipywidgets (~0.5 s): only when asked for
    if name in _WIDGETS:
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_ipython_extension(ipython: Any) -> None:
    from . import environment, jobs, training  # noqa: F401 - subcommands register on import
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .magics import unload_ipython_extension as unload

    unload(ipython)
