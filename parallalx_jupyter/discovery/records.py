"""The DNS-SD record of a device's peer listener: what a device announces, and how a record
heard on the network is checked before it is listed.

A record is untrusted input from anyone on the link. `parse_record` keeps it only if every
field has the expected form (version, a well-formed device ID that is also the instance name,
the TXT port equal to the SRV port, at least one usable IPv4 address) and turns the name into
one line of plain text; anything else is dropped. The URLs listed are built from the checked
address and port, never copied from the record.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from typing import Any, TypedDict

import psutil

from ..identity import display_device_id, parse_device_id
from ..text import NAME_LIMIT, plain

SERVICE_TYPE = "_parallalx._tcp.local."
RECORD_VERSION = "1"
MAX_ADDRESSES = 8
MAX_TXT_KEYS = 16
_NAME_BYTES = 63  # one TXT string of `name=` stays well under the 255-byte limit
_WILDCARDS = ("", "0.0.0.0", "::")


class NearbyDevice(TypedDict):
    """One device heard on the network (the `GET nearby` row)."""

    id: str
    id_display: str
    name: str
    addresses: list[str]
    port: int
    urls: list[str]
    last_seen: float


def is_wildcard(ip: str) -> bool:
    return ip in _WILDCARDS


def announce_addresses(peer_ip: str) -> list[str]:
    """The IPv4 addresses the peer listener is reachable on: its bind address, or for a
    wildcard bind every interface's non-loopback address (127.0.0.1 where there is none)."""
    if not is_wildcard(peer_ip):
        return [peer_ip]
    found = []
    for _name, addrs in sorted(psutil.net_if_addrs().items()):
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                found.append(addr.address)
    return found[:MAX_ADDRESSES] or ["127.0.0.1"]


def _utf8_prefix(text: str, limit: int) -> bytes:
    """`text` as UTF-8, cut to at most `limit` bytes on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore").encode("utf-8")


def instance_name(device_id: str) -> str:
    """The service instance: the device ID, so two devices never claim the same name."""
    return f"{device_id}.{SERVICE_TYPE}"


def txt_record(device_id: str, device_name: str, port: int, address: str) -> dict[str, bytes]:
    """The TXT properties announced: version, device ID, name, peer port and a peer URL (for
    people reading it with other mDNS tools; browsers build URLs from address and port)."""
    host = f"[{address}]" if ":" in address else address
    return {
        "v": RECORD_VERSION.encode(),
        "id": device_id.encode("ascii"),
        "name": _utf8_prefix(plain(device_name, NAME_LIMIT), _NAME_BYTES),
        "port": str(port).encode(),
        "url": f"https://{host}:{port}".encode(),
    }


def _text(props: dict[Any, Any], key: str) -> str | None:
    value = props.get(key.encode())
    if not isinstance(value, bytes):
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _usable(address: str) -> str | None:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return None
    return str(ip)


def parse_record(
    name: str, properties: dict[Any, Any], addresses: list[str], port: int | None,
    now: float | None = None,
) -> NearbyDevice | None:
    """A heard service as a `NearbyDevice`, or None where anything about it is malformed."""
    if not name.endswith("." + SERVICE_TYPE) or not isinstance(properties, dict):
        return None
    if len(properties) > MAX_TXT_KEYS or _text(properties, "v") != RECORD_VERSION:
        return None
    raw_id = _text(properties, "id") or ""
    try:
        device_id = parse_device_id(raw_id)
    except ValueError:
        return None
    # the canonical form only, and the same as the instance name (one record per device ID)
    if raw_id != device_id or name[: -len(SERVICE_TYPE) - 1] != device_id:
        return None
    txt_port = _text(properties, "port") or ""
    if not (isinstance(port, int) and 0 < port < 65536 and txt_port == str(port)):
        return None
    kept: list[str] = []
    for address in addresses[: MAX_ADDRESSES * 4]:
        usable = _usable(address)
        if usable and usable not in kept:
            kept.append(usable)
    kept = kept[:MAX_ADDRESSES]
    if not kept:
        return None
    return NearbyDevice(
        id=device_id,
        id_display=display_device_id(device_id),
        name=plain(_text(properties, "name"), NAME_LIMIT) or "(unnamed device)",
        addresses=kept,
        port=port,
        urls=[f"https://{a}:{port}" for a in kept],
        last_seen=time.time() if now is None else now,
    )
