"""What the pairing rules are configured with (from `c.ParallalxApp.*`; the defaults are the
app's, from the settings table `parallalx_jupyter.settings.SETTINGS`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import default


@dataclass
class PairingSettings:
    device_name: str
    request_ttl: float = default("request_ttl")
    # seconds an opened request may wait for its reveal: unrevealed opens stop counting toward
    # max_pending / max_pending_per_ip / one-per-sender after this, so they cannot lock a
    # real device out for request_ttl
    reveal_window: float = default("reveal_window")
    clock_skew: float = default("clock_skew")
    max_pending: int = default("max_pending")
    max_pending_per_ip: int = default("max_pending_per_ip")
    poll_interval: float = default("poll_interval")
    peer_port: int = 0  # the port the listener got (set when it listens), not the setting
