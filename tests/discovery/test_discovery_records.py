"""What a heard DNS-SD record must look like to be listed, and how the list prints: records are
untrusted input from anyone on the network."""

from __future__ import annotations

import os

from parallalx_jupyter.discovery.records import (
    MAX_ADDRESSES,
    SERVICE_TYPE,
    instance_name,
    parse_record,
    txt_record,
)
from parallalx_jupyter.identity import device_id_from_public_der
from parallalx_jupyter.text import nearby_text

DEV = device_id_from_public_der(os.urandom(32))


def _props(**over: bytes) -> dict[bytes, bytes]:
    props = {k.encode(): v for k, v in txt_record(DEV, "lab desktop", 8476, "10.0.0.5").items()}
    props.update({k.encode(): v for k, v in over.items()})
    return props


def test_a_well_formed_record_is_listed_with_urls_built_from_address_and_port():
    row = parse_record(instance_name(DEV), _props(url=b"https://evil.example:1"),
                       ["10.0.0.5", "10.0.0.5", "192.168.1.9"], 8476, now=5.0)
    assert row == {
        "id": DEV, "id_display": row["id_display"], "name": "lab desktop",
        "addresses": ["10.0.0.5", "192.168.1.9"], "port": 8476,
        "urls": ["https://10.0.0.5:8476", "https://192.168.1.9:8476"], "last_seen": 5.0,
    }
    assert row["id_display"].replace("-", "")[:13] == DEV[:13]


def test_malformed_records_are_ignored():
    name = instance_name(DEV)
    other = device_id_from_public_der(os.urandom(32))
    bad = [
        (name, _props(v=b"2"), ["10.0.0.5"], 8476),  # unknown version
        (name, _props(id=b"not-an-id"), ["10.0.0.5"], 8476),
        (name, _props(id=other.encode()), ["10.0.0.5"], 8476),  # ID is not the instance
        (name, _props(id=DEV.lower().encode()), ["10.0.0.5"], 8476),  # not canonical
        (name, _props(port=b"9999"), ["10.0.0.5"], 8476),  # TXT and SRV ports differ
        (name, _props(), ["10.0.0.5"], 0),
        (name, _props(), ["10.0.0.5"], None),
        (name, _props(), [], 8476),  # no address
        (name, _props(), ["0.0.0.0", "224.0.0.251", "nonsense", "::1"], 8476),
        (name, _props(id=b"\xff\xfe"), ["10.0.0.5"], 8476),  # not UTF-8
        (f"{DEV}._other._tcp.local.", _props(), ["10.0.0.5"], 8476),
        (name, {**_props(), **{f"k{i}".encode(): b"x" for i in range(20)}}, ["10.0.0.5"], 8476),
    ]
    for args in bad:
        assert parse_record(*args) is None, args


def test_announced_text_is_data_and_addresses_are_capped():
    props = _props(name="\x1b[31mEvil\u202e\n<b>box</b> ".encode() + b"x" * 500)
    addresses = [f"10.0.1.{i}" for i in range(1, 40)]
    row = parse_record(instance_name(DEV), props, addresses, 8476)
    assert row is not None
    assert "\x1b" not in row["name"] and "\u202e" not in row["name"] and "\n" not in row["name"]
    assert len(row["name"]) <= 64
    assert len(row["addresses"]) == MAX_ADDRESSES == len(row["urls"])
    unnamed = parse_record(instance_name(DEV), _props(name=b"\x00\x07"), ["10.0.0.5"], 8476)
    assert unnamed is not None and unnamed["name"] == "(unnamed device)"


def test_the_announced_name_fits_one_txt_string():
    props = txt_record(DEV, "é" * 200, 1, "127.0.0.1")
    assert len(props["name"]) <= 63 and props["name"].decode("utf-8")
    assert SERVICE_TYPE == "_parallalx._tcp.local."


def test_text_gives_name_id_prefix_address_and_the_invite_command():
    row = parse_record(instance_name(DEV), _props(), ["10.0.0.5"], 8476)
    out = nearby_text([{**row, "paired": False}])
    first, command = out.splitlines()[:2]
    assert first.startswith("lab desktop  ") and row["id_display"][:15] in first
    assert "10.0.0.5:8476" in first and "(paired)" not in first
    assert command.strip() == "parallalx invite https://10.0.0.5:8476"
    assert "proves nothing" in out
    assert "%parallalx invite" in nearby_text([row], "%parallalx")
    assert nearby_text([]).startswith("No devices found nearby.")


def test_announced_addresses_follow_the_listeners_bind_address():
    import socket

    import psutil

    from parallalx_jupyter.discovery import announce_addresses

    assert announce_addresses("127.0.0.1") == ["127.0.0.1"]
    assert announce_addresses("10.77.0.2") == ["10.77.0.2"]
    lan = [a.address for _n, addrs in sorted(psutil.net_if_addrs().items()) for a in addrs
           if a.family == socket.AF_INET and not a.address.startswith("127.")]
    assert announce_addresses("0.0.0.0") == (lan[:MAX_ADDRESSES] or ["127.0.0.1"])
