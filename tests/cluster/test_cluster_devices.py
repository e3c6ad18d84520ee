"""Three real devices: B and C accept A's requests, their workers join A's scheduler over TLS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from distributed import Client

from parallalx_jupyter.cluster import SchedulerProcess, WorkerSpec, WorkerSupervisor
from parallalx_jupyter.cluster.tls import RevocationList
from parallalx_jupyter.local_device import DeviceError, wait_for


def _pair(main, dev):
    sent = main.api("POST", "invitations", {"url": dev.peer_url, "asks": {"nthreads": 1}})
    shown = dev.api("GET", f"requests/{sent['id']}")
    # the invite shows where the worker will connect and which CA it will trust
    cluster = main.api("GET", "cluster")
    assert shown["asks"]["cluster"]["ca_fingerprint"] == cluster["ca_fingerprint"]
    assert cluster["scheduler_address"].endswith(f":{shown['asks']['cluster']['scheduler_port']}")
    assert shown["shown_hash"] == sent["shown_hash"]
    t0 = time.perf_counter()
    dev.api("POST", f"requests/{sent['id']}/accept", {"shown_hash": shown["shown_hash"]})
    return t0


def _workers_by_device(main):
    return {w["device_id"] for w in main.api("GET", "cluster")["workers"]}


async def _main_client(main) -> Client:
    sched = SchedulerProcess.from_cluster_dir(main.home / "state" / "cluster")
    return await sched.client()


async def test_accepted_devices_join_run_tasks_and_revoke_is_immediate(make_device, tmp_path):
    a, b, c = make_device("alpha"), make_device("bravo"), make_device("charlie")
    b_id, c_id = b.api("GET", "device")["id"], c.api("GET", "device")["id"]
    t0 = _pair(a, b)
    wait_for(lambda: b_id in _workers_by_device(a), 30, 0.05)
    joined_s = time.perf_counter() - t0
    _pair(a, c)
    wait_for(lambda: {b_id, c_id} <= _workers_by_device(a), 30, 0.05)
    print(f"accept -> worker joined: {joined_s:.2f} s")

    state = a.api("GET", "cluster")
    assert state["running"] and state["scheduler_address"].startswith("tls://127.0.0.1:")
    wait_for(lambda: b.api("GET", "cluster")["serving"][0]["state"] == "running", 30)

    client = await _main_client(a)
    try:
        addrs = {w["device_id"]: w["address"] for w in state["workers"]}
        for device_id in (b_id, c_id):
            pid = await client.submit(os.getpid, workers=[addrs[device_id]], pure=False)
            assert pid != 0
        # keep C's certificate to try it again after the revoke
        c_dir = c.home / "state" / "workers" / a.api("GET", "device")["id"]
        saved = tmp_path / "c-old"
        shutil.copytree(c_dir, saved, ignore=shutil.ignore_patterns("run"))

        t_revoke = time.perf_counter()
        a.api("POST", f"devices/{c_id}/revoke")
        wait_for(lambda: c_id not in _workers_by_device(a), 5, 0.05)
        print(f"revoke -> worker gone: {time.perf_counter() - t_revoke:.2f} s")
        wait_for(lambda: c.api("GET", "cluster")["serving"] == [], 5)

        spec = WorkerSpec(
            scheduler_address=state["scheduler_address"], device_id=c_id,
            ca_file=str(saved / "ca.crt"), cert_file=str(saved / "worker.crt"),
            key_file=str(saved / "worker.key"), worker_dir=str(tmp_path / "c-run"),
        )
        old = WorkerSupervisor(spec, backoff_max=1.0)
        await old.start()
        try:
            with pytest.raises(PermissionError):
                await old.wait_joined(timeout=20)
        finally:
            await old.stop()
        assert c_id not in _workers_by_device(a)
    finally:
        await client.close()

    # A restarts: the scheduler re-forms on the same address and B's worker comes back
    a.stop()
    a.start()
    wait_for(lambda: b_id in _workers_by_device(a), 60, 0.2)
    assert a.api("GET", "cluster")["scheduler_address"] == state["scheduler_address"]
    assert c_id not in _workers_by_device(a)


def test_accept_is_bound_to_what_was_shown(make_device):
    a, b = make_device("alpha"), make_device("bravo")
    sent = a.api("POST", "invitations", {"url": b.peer_url})
    with pytest.raises(DeviceError) as err:
        b.api("POST", f"requests/{sent['id']}/accept", {"shown_hash": "0" * 64})
    assert err.value.status == 409 and "not the one that was shown" in str(err.value)
    assert b.api("GET", f"requests/{sent['id']}")["state"] == "pending"


def _cli(dev, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARALLALX_")}
    proc = subprocess.run(
        [sys.executable, "-m", "parallalx_jupyter.cli", "--home", str(dev.home / "state"), *args],
        capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _serving(dev):
    entries = dev.api("GET", "cluster")["serving"]
    return entries[0] if entries else {}


def test_a_reinvite_from_a_paired_device_renews_the_grant_and_keeps_the_worker(make_device):
    """Accepting a second invitation from the device we already serve renews the grant: the
    card says so, the running worker stays (same address, tasks still run) and the main device
    signs its certificate under the new request, whichever side hears of the accept first."""
    a, b = make_device("alpha"), make_device("bravo")
    b_id = b.api("GET", "device")["id"]
    _pair(a, b)
    wait_for(lambda: b_id in _workers_by_device(a), 30, 0.05)
    wait_for(lambda: _serving(b).get("state") == "running", 30)
    address = next(w["address"] for w in a.api("GET", "cluster")["workers"]
                   if w["device_id"] == b_id)

    again = a.api("POST", "invitations", {"url": b.peer_url, "asks": {"nthreads": 1}})
    shown = b.api("GET", f"requests/{again['id']}")
    assert shown["already_paired"] is True
    assert b.api("GET", "requests?state=open")[0]["already_paired"] is True
    b.api("POST", f"requests/{again['id']}/accept", {"shown_hash": shown["shown_hash"]})
    wait_for(lambda: _serving(b).get("request_id") == again["id"], 30, 0.05)
    assert _serving(b)["state"] == "running" and not _serving(b).get("message")
    assert [w["address"] for w in a.api("GET", "cluster")["workers"]
            if w["device_id"] == b_id] == [address]
    assert b.api("GET", f"requests/{again['id']}")["already_paired"] is False  # it is the pairing


def test_a_refused_join_says_why_on_both_sides_and_is_asked_again_while_paired(make_device):
    """The main device's scheduler refuses the worker (here: a revocation on its disk that a
    re-pair is about to clear). Both devices show why; the worker device asks again with
    backoff while it is still paired, so it is in as soon as the list is cleared."""
    a, b = make_device("alpha"), make_device("bravo")
    a_id, b_id = a.api("GET", "device")["id"], b.api("GET", "device")["id"]
    _pair(a, b)
    wait_for(lambda: b_id in _workers_by_device(a), 30, 0.05)
    revocations = RevocationList.in_dir(a.home / "state" / "cluster")
    revocations.revoke_device(b_id, "stale")  # on disk only, as a re-pair finds it

    wait_for(lambda: _serving(b).get("state") == "refused", 30, 0.1)
    assert "revoked" in _serving(b)["message"] and _serving(b)["next_retry_at"]
    refused = a.api("GET", "cluster")["refused_joins"]
    assert [(r["device_id"], r["device_name"]) for r in refused] == [(b_id, "bravo")]
    assert "revoked" in refused[0]["reason"]
    # the CLI says it too, by name, on both sides
    assert f"refused: bravo [{b_id[:15]}" in _cli(a, "cluster")
    assert "serving main device alpha" in _cli(b, "cluster") and "refused" in _cli(b, "cluster")
    # the user's Retry while still refused: tried at once, refused again, still retried
    assert b.api("POST", f"cluster/serving/{a_id}/retry")["serving"][0]["state"] == "refused"
    assert "serving main device alpha" in _cli(b, "cluster", "retry", "alpha")
    with pytest.raises(DeviceError) as err:
        b.api("POST", f"cluster/serving/{b_id}/retry")
    assert err.value.status == 404
    # the main device has no main device of its own to retry: bravo is its worker (QA: this
    # answered 200 and left a lasting 'serving bravo: failed' entry in its cluster view)
    with pytest.raises(DeviceError) as err:
        a.api("POST", f"cluster/serving/{b_id}/retry")
    assert err.value.status == 404 and a.api("GET", "cluster")["serving"] == []

    revocations.unrevoke_device(b_id)  # what accepting the device again does
    wait_for(lambda: b_id in _workers_by_device(a), 40, 0.1)  # no user action needed
    wait_for(lambda: _serving(b).get("state") == "running", 10)
    assert not _serving(b).get("message") and a.api("GET", "cluster")["refused_joins"] == []


def test_worker_side_revoke_stops_the_worker(make_device):
    a, b = make_device("alpha"), make_device("bravo")
    a_id, b_id = a.api("GET", "device")["id"], b.api("GET", "device")["id"]
    _pair(a, b)
    wait_for(lambda: b_id in _workers_by_device(a), 30, 0.05)
    t0 = time.perf_counter()
    b.api("POST", f"devices/{a_id}/revoke")
    wait_for(lambda: b_id not in _workers_by_device(a), 5, 0.05)
    print(f"stop sharing -> worker gone: {time.perf_counter() - t0:.2f} s")
    assert b.api("GET", "cluster")["serving"] == []


def test_cluster_stop_start_and_add_self(make_device):
    a = make_device("alpha")  # main_device_trains off (tests/conftest.py)
    a_id = a.api("GET", "device")["id"]
    assert a.api("GET", "cluster")["running"] is False
    state = a.api("POST", "cluster/add-self", {"nthreads": 1})
    assert state["running"]
    wait_for(lambda: a_id in _workers_by_device(a), 30, 0.1)
    stopped = a.api("POST", "cluster/stop")
    assert stopped["running"] is False and stopped["workers"] == []
    started = a.api("POST", "cluster/start")
    assert started["running"] is True
    assert started["workers"] == [] and started["own_worker"] is None  # opted out: none


def _own_workers(main, main_id):
    return [w for w in main.api("GET", "cluster")["workers"] if w["device_id"] == main_id]


def test_the_main_device_trains_by_default(make_device):
    """With the defaults the main device's own worker starts with its cluster (here: on the
    first invited device), is named like the other devices, and stays one worker however often
    the cluster starts, `add-self` is asked or the server restarts."""
    from parallalx_jupyter import text

    a = make_device("alpha", env={"PARALLALX_MAIN_DEVICE_TRAINS": ""})  # the table's default
    b = make_device("bravo")
    a_id, b_id = a.api("GET", "device")["id"], b.api("GET", "device")["id"]
    _pair(a, b)
    wait_for(lambda: {a_id, b_id} <= _workers_by_device(a), 60, 0.2)
    state = a.api("GET", "cluster")
    named = {w["device_id"]: (w["device_name"], w["this_device"]) for w in state["workers"]}
    assert named == {a_id: ("alpha", True), b_id: ("bravo", False)}
    assert state["own_worker"]["state"] == "running" and state["serving"] == []
    shown = text.cluster_text(state)
    assert "alpha (this device)" in shown and "bravo" in shown, shown

    # starting again and add-self with the settings it runs with add nothing
    assert len(a.api("POST", "cluster/start")["workers"]) == 2
    with pytest.raises(DeviceError) as err:
        a.api("POST", "cluster/add-self", {"nthreads": 1})
    assert err.value.status == 409 and "already trains" in str(err.value)
    # a restarted server re-forms with its own worker, which a start then leaves as it is
    a.stop()
    a.start()
    [own] = wait_for(lambda: _own_workers(a, a_id), 60, 0.2)
    again = a.api("POST", "cluster/start")
    assert [w["address"] for w in again["workers"] if w["this_device"]] == [own["address"]]


def test_offered_device_joins_the_main_devices_cluster(make_device):
    main, helper = make_device("main"), make_device("helper")
    helper_id = helper.api("GET", "device")["id"]
    sent = helper.api("POST", "invitations", {"url": main.peer_url, "kind": "offer",
                                              "asks": {"nthreads": 1}})
    main.api("POST", f"requests/{sent['id']}/accept", {})
    wait_for(lambda: helper_id in _workers_by_device(main), 60, 0.1)
    wait_for(lambda: helper.api("GET", "cluster")["serving"][0]["state"] == "running", 30)
