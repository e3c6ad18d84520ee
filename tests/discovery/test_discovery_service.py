"""The announcer and browser in this process: real zeroconf instances on 127.0.0.1 (multicast
on the loopback interface), real records, no device processes."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import psutil
import pytest
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from parallalx_jupyter.discovery import SERVICE_TYPE, Discovery
from parallalx_jupyter.discovery.records import instance_name, txt_record
from parallalx_jupyter.identity import device_id_from_public_der
from parallalx_jupyter.local_device import free_port


def new_id() -> str:
    return device_id_from_public_der(os.urandom(32))


def discovery(name: str, announce: bool = True, **kw) -> Discovery:
    return Discovery(device_id=new_id(), device_name=name, peer_ip="127.0.0.1",
                     peer_port=free_port(), announce=announce, **kw)


async def until(predicate, timeout: float = 15.0):
    """Wait for `predicate()` (multicast answers take a second or two; longer under load)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (value := predicate()):
        if loop.time() > deadline:
            raise TimeoutError("not seen in time")
        await asyncio.sleep(0.1)
    return value


def ids(d: Discovery) -> set[str]:
    return {row["id"] for row in d.nearby()}


@pytest.mark.e2e  # real multicast announcements and their TTLs: seconds of waiting
async def test_devices_see_each_other_not_themselves_and_the_opt_out_hides_one():
    a, b, hidden = discovery("alpha"), discovery("bravo"), discovery("quiet", announce=False)
    for d in (a, b, hidden):
        await d.start()
    try:
        await until(lambda: b.device_id in ids(a) and a.device_id in ids(b))
        await until(lambda: {a.device_id, b.device_id} <= ids(hidden))  # it still browses
        [row] = [r for r in a.nearby() if r["id"] == b.device_id]
        assert row["name"] == "bravo" and row["addresses"] == ["127.0.0.1"]
        assert row["urls"] == [f"https://127.0.0.1:{b.peer_port}"]
        assert a.device_id not in ids(a)
        await asyncio.sleep(2.0)  # announcements settle: the quiet one never shows up
        assert hidden.device_id not in ids(a) | ids(b)
        # a clean stop says goodbye: the others drop it at once, not after the TTL
        await b.stop()
        await until(lambda: b.device_id not in ids(a), timeout=5.0)
    finally:
        for d in (a, b, hidden):
            await d.stop()


@pytest.mark.e2e
async def test_malformed_records_are_not_listed_and_the_list_is_capped():
    listener = discovery("listener", announce=False, max_devices=2)
    await listener.start()
    zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    infos = []
    try:
        spoofed, good1, good2, good3 = new_id(), new_id(), new_id(), new_id()
        # the TXT ID is not the instance name: dropped
        bad = txt_record(new_id(), "liar", 9, "127.0.0.1")
        infos.append(AsyncServiceInfo(SERVICE_TYPE, instance_name(spoofed),
                                      addresses=[socket.inet_aton("127.0.0.1")], port=9,
                                      properties=bad, server="liar.local."))
        for i, dev in enumerate((good1, good2, good3)):
            infos.append(AsyncServiceInfo(
                SERVICE_TYPE, instance_name(dev), addresses=[socket.inet_aton("127.0.0.1")],
                port=1000 + i, properties=txt_record(dev, f"good{i}", 1000 + i, "127.0.0.1"),
                server=f"good{i}.local."))
        for info in infos:
            await zc.async_register_service(info)
        mine = {good1, good2, good3, spoofed}
        await until(lambda: len(ids(listener) & mine) >= 2)
        await asyncio.sleep(1.5)
        assert len(listener.nearby()) <= 2  # capped, whatever else the link carries
        assert spoofed not in ids(listener)
    finally:
        for info in infos:
            await zc.async_unregister_service(info)
        await zc.async_close()
        await listener.stop()


async def test_no_multicast_interface_logs_once_and_lists_nothing(caplog):
    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs}
    absent = "198.51.100.77"  # TEST-NET-2: on no interface of this host
    if absent in local:
        pytest.skip(f"{absent} is an address of this host")
    d = Discovery(device_id=new_id(), device_name="lonely", peer_ip=absent, peer_port=1,
                  log=logging.getLogger("discovery-test"))
    with caplog.at_level(logging.WARNING, logger="discovery-test"):
        await d.start()
        await d.start()  # a second try does not log again
    assert d.nearby() == [] and d.unavailable
    warnings = [r for r in caplog.records if r.name == "discovery-test"]
    assert len(warnings) == 1 and "discovery is off" in warnings[0].getMessage()
    await d.stop()
