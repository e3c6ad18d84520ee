"""The device's settings: one table of name, type, default and help.

Each row is a configurable trait of ``ParallalxApp`` (``c.ParallalxApp.<name>``,
``--ParallalxApp.<name>=...``) whose default reads the environment variable
``PARALLALX_<NAME>`` first (config files and the command line still win over it). The traits
are built from this table (``app.py``), the modules that have such a setting take their
default from it (:func:`default`: the peer listener's rate limits, the pairing rules, the job
list) and README's configuration table is checked against it (``tests/test_settings.py``), so
each number exists once.

This module imports nothing from the package: it sits below every layer that reads it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SETTINGS", "Computed", "Setting", "default", "env_name", "from_env", "resolve"]


@dataclass(frozen=True)
class Computed:
    """A default worked out when the app starts: ``shown`` is how README and ``--help`` say it,
    ``compute(get)`` the value (``get(name)``: another setting's value)."""

    shown: str
    compute: Callable[[Callable[[str], Any]], Any]


@dataclass(frozen=True)
class Setting:
    """One row: the trait's name, its type (str, int, float or bool), its default and its
    help."""

    name: str
    type: type
    default: Any  # a value of `type`, or a `Computed`
    help: str

    @property
    def env(self) -> str:
        return env_name(self.name)

    @property
    def shown_default(self) -> str:
        """The default as README and ``--help`` write it."""
        return self.default.shown if isinstance(self.default, Computed) else repr(self.default)


def _jupyter_home() -> str:
    from jupyter_core.paths import jupyter_data_dir

    return str(Path(jupyter_data_dir()) / "parallalx")


SETTINGS: tuple[Setting, ...] = (
    Setting("home", str, Computed("<jupyter data dir>/parallalx", lambda get: _jupyter_home()),
            "State directory (keys, database)."),
    Setting("device_name", str, Computed("hostname", lambda get: socket.gethostname()),
            "Name shown to other devices."),
    Setting("peer_ip", str, "0.0.0.0",
            "Interface of the peer listener (pairing only). 0.0.0.0 = every interface; "
            "127.0.0.1 = this machine only."),
    Setting("peer_port", int, 8476, "Peer listener port; 0 picks a free one."),
    Setting("request_ttl", float, 600.0, "Seconds a connection request stays open."),
    Setting("reveal_window", float, 30.0,
            "Seconds an opened request may wait for its reveal (the second step of pairing, "
            "sent at once by a real device); unrevealed requests stop counting toward the caps "
            "after it."),
    Setting("clock_skew", float, 300.0, "Allowed clock difference between devices, seconds."),
    Setting("max_pending", int, 50, "Most open incoming requests in total."),
    Setting("max_pending_per_ip", int, 5, "Most open incoming requests from one address."),
    Setting("peer_rate", float, 5.0, "Peer listener requests per second allowed per address."),
    Setting("peer_burst", int, 20, "Burst size for peer_rate."),
    Setting("peer_global_rate", float, 200.0, "Peer listener requests per second in total."),
    Setting("poll_interval", float, 2.0, "Seconds between polls for outcomes of sent requests."),
    Setting("scheduler_ip", str, Computed("peer_ip", lambda get: get("peer_ip")),
            "Interface the Dask scheduler binds when this is a main device."),
    Setting("scheduler_port", int, 0, "Dask scheduler port; 0 picks one once and keeps it."),
    Setting("main_device_trains", bool, True,
            "This device trains too once it runs a cluster: its own worker starts with the "
            "scheduler, in the Python running this server (`parallalx cluster add-self "
            "--kernel` picks another). False: only the paired devices train."),
    Setting("discoverable", bool, True,
            "Announce this device's peer listener on the local network (mDNS/DNS-SD) so that "
            "nearby devices list it. An announcement proves nothing: the verification code "
            "stays the check. False: not announced (this device still lists the others)."),
    Setting("job_stale_after", float, 30.0,
            "Seconds without a report after which a running job is shown as lost (its kernel "
            "died or its machine slept)."),
)

_BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}


def env_name(name: str) -> str:
    return f"PARALLALX_{name.upper()}"


def default(name: str) -> Any:
    """The table's default of setting ``name`` (a plain value; not for a computed one)."""
    value = _BY_NAME[name].default
    if isinstance(value, Computed):
        raise ValueError(f"the default of {name} is computed when the app starts: see resolve()")
    return value


def from_env(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """``PARALLALX_<NAME>`` as the setting's type, or None where unset or empty."""
    setting = _BY_NAME[name]
    raw = (os.environ if environ is None else environ).get(setting.env)
    if raw in (None, ""):
        return None
    if setting.type is bool:
        if raw.strip().lower() not in _BOOLS:
            raise ValueError(f"{setting.env}={raw!r} is not a valid bool for {name}: use "
                             "1/0, true/false, yes/no or on/off")
        return _BOOLS[raw.strip().lower()]
    try:
        return setting.type(raw)
    except ValueError:
        raise ValueError(
            f"{setting.env}={raw!r} is not a valid {setting.type.__name__} for {name}"
        ) from None


def resolve(name: str, get: Callable[[str], Any] | None = None,
            environ: Mapping[str, str] | None = None) -> Any:
    """The value before config: the environment's, else the default (a computed one with
    ``get``, which gives another setting's value; by default that setting's own `resolve`)."""
    value = from_env(name, environ)
    if value is not None:
        return value
    fallback = _BY_NAME[name].default
    if not isinstance(fallback, Computed):
        return fallback
    return fallback.compute(get or (lambda other: resolve(other, None, environ)))
