"""What the pairing rules are configured with (from `c.ParallalxApp.*`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PairingSettings:
    device_name: str
    request_ttl: float = 600.0
    # seconds an opened request may wait for its reveal: unrevealed opens stop counting toward
    # max_pending / max_pending_per_ip / one-per-sender after this, so they cannot lock a
    # real device out for request_ttl
    reveal_window: float = 30.0
    clock_skew: float = 300.0
    max_pending: int = 50
    max_pending_per_ip: int = 5
    poll_interval: float = 2.0
    peer_port: int = 0
