"""The Parallalx sidebar in a real JupyterLab, driven by real peer devices.

Every test runs twice: with the server at `/` and under `ServerApp.base_url=/user/someone/`.
Screenshots of each state go to test-artifacts/ui/<variant>/<test>/.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from ui_helpers import HOSTILE_NAME, LabPage

from parallalx_jupyter.local_device import DeviceError, LocalDevice, wait_for


def code_text(code: str) -> str:
    return f"{code[:3]} {code[3:]}"


def send_request(sender: LocalDevice, lab: LocalDevice, **asks: Any) -> dict[str, Any]:
    return sender.api("POST", "invitations", {"url": lab.peer_url, "kind": "invite", "asks": asks})


def lab_kernels(lab: LocalDevice) -> list[dict[str, Any]]:
    """The kernels API (environments layer); an empty list where the server has none."""
    try:
        return lab.api("GET", "kernels")
    except DeviceError as err:
        if err.status == 404:
            return []
        raise


def lab_state(lab: LocalDevice, request_id: str) -> str:
    return lab.api("GET", f"requests/{request_id}")["state"]


def requester_sees(sender: LocalDevice, request_id: str, state: str) -> None:
    wait_for(lambda: sender.api("GET", f"requests/{request_id}")["state"] == state, timeout=10)


def pair(sender: LocalDevice, lab: LocalDevice) -> dict[str, Any]:
    """Pair through the REST API (for tests about what comes after pairing)."""
    sent = send_request(sender, lab)
    lab.api("POST", f"requests/{sent['id']}/accept", {})
    requester_sees(sender, sent["id"], "accepted")
    return sent


def test_panel_shows_this_device(lab_page: LabPage, lab: LocalDevice) -> None:
    info = lab.api("GET", "device")
    section = lab_page.section("device")
    section.locator(".jp-Parallalx-deviceName").filter(has_text=info["name"]).wait_for()
    assert section.locator(".jp-Parallalx-deviceId").inner_text() == info["id_display"]
    urls = section.locator(".jp-Parallalx-peerUrls li").all_inner_texts()
    assert urls == info["peer_urls"] and lab.peer_url in urls
    cores = section.locator(".jp-Parallalx-cores").inner_text()
    assert f"{info['profile']['cpu_cores']} cores" in cores
    assert "GiB" in section.locator(".jp-Parallalx-memory").inner_text()
    assert section.locator(".jp-Parallalx-gpus li").count() >= 1
    lab_page.page.locator(".jp-Parallalx-gpus").filter(has_not_text="not probed").wait_for()
    # the sections that exist now, and no placeholders for later ones
    titles = lab_page.panel.locator(".jp-AccordionPanel-title").all_text_contents()
    assert [t.strip() for t in titles] == [
        "This device", "Requests", "Devices", "Nearby", "Cluster", "Jobs"]
    lab_page.shot("01-this-device")


def test_request_appears_with_toast_and_accept_in_panel(
    lab_page: LabPage, lab: LocalDevice, peers: dict[str, LocalDevice]
) -> None:
    alice = peers["alice"]
    page = lab_page.page
    lab_page.section("requests").locator(".jp-Parallalx-empty").wait_for()
    sent = send_request(alice, lab, purpose="train a digits MLP", nthreads=2, gpus=0)
    t0 = time.monotonic()
    card = lab_page.section("requests").locator(
        f'.jp-Parallalx-incomingRequest[data-request-id="{sent["id"]}"]'
    )
    card.wait_for(timeout=1000)
    toast = lab_page.toast(sent["code"])
    toast.wait_for(timeout=max(100, int(1000 - (time.monotonic() - t0) * 1000)))
    assert time.monotonic() - t0 < 1.0
    assert "alice-laptop" in toast.inner_text()

    # the card: who, device ID, what is asked, code, expiry, kernel hook, actions
    assert card.locator(".jp-Parallalx-peerName").inner_text() == "alice-laptop"
    card.locator(".jp-Parallalx-peerName").click()  # a compact row: open its details
    card.locator(".jp-Parallalx-asks").wait_for()
    alice_info = alice.api("GET", "device")
    assert card.locator(".jp-Parallalx-peerId").inner_text() == alice_info["id_display"]
    asks = card.locator(".jp-Parallalx-asks").inner_text()
    assert "2 CPU threads" in asks and "0 GPUs" in asks
    assert "train a digits MLP" in card.locator(".jp-Parallalx-purpose").inner_text()
    assert card.locator(".jp-Parallalx-code").inner_text() == code_text(sent["code"])
    countdown = card.locator(".jp-Parallalx-countdown").inner_text()
    assert countdown.startswith(("9:", "10:")), countdown
    # the kernel selector: the default environment plus this device's kernels API, if any
    select = card.locator(".jp-Parallalx-kernel")
    kernels = lab_kernels(lab)
    values = select.locator("option").evaluate_all("os => os.map(o => o.value)")
    assert values == ["", *[k["name"] for k in kernels]]
    chosen = next((k["name"] for k in kernels if k.get("selectable")), None)
    if chosen:
        select.select_option(chosen)
    status = page.locator("#parallalx-jupyter-status")
    status.wait_for()
    assert status.inner_text().strip() == "1"
    lab_page.shot("01-request-and-toast")

    card.locator(".jp-Parallalx-accept").click()
    wait_for(lambda: lab_state(lab, sent["id"]) == "accepted", timeout=5)
    requester_sees(alice, sent["id"], "accepted")
    assert any(d["name"] == "main-desktop" for d in alice.api("GET", "devices"))
    card.wait_for(state="detached", timeout=5000)
    toast.wait_for(state="detached", timeout=5000)  # decided elsewhere: the toast goes away
    status.wait_for(state="hidden", timeout=5000)
    device_card = lab_page.section("devices").locator(
        f'.jp-Parallalx-pairedDevice[data-device-id="{alice_info["id"]}"]'
    )
    device_card.wait_for(timeout=5000)
    # alice invited this device: alice is the main device, this one works for it
    assert "main device" in device_card.locator(".jp-Parallalx-role").inner_text()
    assert device_card.get_attribute("data-state") == "paired"
    if chosen:  # the kernel picked in the panel went with the accept
        grant = lab.api("GET", f"devices/{alice_info['id']}")["grant"]
        assert grant["selection"]["kernel"] == chosen
    lab_page.shot("02-accepted")


def test_reject_in_panel(
    lab_page: LabPage, lab: LocalDevice, peers: dict[str, LocalDevice]
) -> None:
    alice = peers["alice"]
    sent = send_request(alice, lab, purpose="please")
    card = lab_page.section("requests").locator(
        f'.jp-Parallalx-incomingRequest[data-request-id="{sent["id"]}"]'
    )
    card.wait_for(timeout=2000)
    lab_page.shot("01-pending")
    card.locator(".jp-Parallalx-reject").click()
    wait_for(lambda: lab_state(lab, sent["id"]) == "rejected", timeout=5)
    requester_sees(alice, sent["id"], "rejected")
    card.wait_for(state="detached", timeout=5000)
    lab_page.toast(sent["code"]).wait_for(state="detached", timeout=5000)
    lab_page.shot("02-rejected")


def test_revoke_with_confirm_dialog(
    lab_page: LabPage, lab: LocalDevice, peers: dict[str, LocalDevice]
) -> None:
    alice = peers["alice"]
    pair(alice, lab)
    alice_id = alice.api("GET", "device")["id"]
    page = lab_page.page
    card = lab_page.section("devices").locator(
        f'.jp-Parallalx-pairedDevice[data-device-id="{alice_id}"][data-state="paired"]'
    )
    card.wait_for(timeout=7000)  # event → refresh (or the polling fallback)

    card.locator(".jp-Parallalx-revoke").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for()
    assert "alice-laptop" in dialog.inner_text()
    lab_page.shot("01-confirm")
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached")
    assert lab.api("GET", f"devices/{alice_id}")["state"] == "paired"

    card.locator(".jp-Parallalx-revoke").click()
    dialog.get_by_role("button", name="Revoke").click()
    wait_for(lambda: lab.api("GET", f"devices/{alice_id}")["state"] == "revoked", timeout=5)
    lab_id = lab.api("GET", "device")["id"]
    wait_for(
        lambda: alice.api("GET", f"devices/{lab_id}")["state"] == "revoked_by_peer", timeout=10
    )
    lab_page.section("devices").locator(
        f'.jp-Parallalx-pairedDevice[data-device-id="{alice_id}"][data-state="revoked"]'
    ).wait_for(timeout=5000)
    assert (
        lab_page.section("devices")
        .locator(f'[data-device-id="{alice_id}"] .jp-Parallalx-revoke')
        .count()
        == 0
    )
    lab_page.shot("02-revoked")


def test_hostile_name_renders_as_text(
    lab_page: LabPage, lab: LocalDevice, peers: dict[str, LocalDevice]
) -> None:
    hostile = peers["hostile"]
    page = lab_page.page
    sent = send_request(hostile, lab, purpose='<b>bold</b><script>alert("p")</script>')
    card = lab_page.section("requests").locator(
        f'.jp-Parallalx-incomingRequest[data-request-id="{sent["id"]}"]'
    )
    card.wait_for(timeout=2000)
    toast = lab_page.toast(sent["code"])
    toast.wait_for(timeout=2000)
    assert card.locator(".jp-Parallalx-peerName").inner_text() == HOSTILE_NAME
    assert '<script>alert("p")</script>' in card.locator(".jp-Parallalx-purpose").inner_text()
    assert HOSTILE_NAME in toast.inner_text()
    lab_page.shot("01-request")

    # accept from the toast action, then the name shows in Devices and in the revoke dialog
    toast.get_by_role("button", name="Accept").click()
    requester_sees(hostile, sent["id"], "accepted")
    hostile_id = hostile.api("GET", "device")["id"]
    device_card = lab_page.section("devices").locator(f'[data-device-id="{hostile_id}"]')
    device_card.wait_for(timeout=5000)
    assert device_card.locator(".jp-Parallalx-peerName").inner_text() == HOSTILE_NAME
    device_card.locator(".jp-Parallalx-revoke").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for()
    assert HOSTILE_NAME in dialog.inner_text()
    lab_page.shot("02-revoke-dialog")
    dialog.get_by_role("button", name="Revoke").click()
    wait_for(lambda: lab.api("GET", f"devices/{hostile_id}")["state"] == "revoked", timeout=5)

    # nothing the peer sent became markup anywhere in the page
    assert page.locator('img[src="x"]').count() == 0
    for where in ("#parallalx-jupyter-panel", ".Toastify", ".jp-Dialog", "#jp-main-statusbar"):
        assert page.locator(f"{where} :is(img, b, script)").count() == 0
    assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0
    lab_page.shot("03-revoked")


def test_invite_by_url_from_command_palette(
    lab_page: LabPage, lab: LocalDevice, peers: dict[str, LocalDevice]
) -> None:
    alice = peers["alice"]
    page = lab_page.page
    lab_page.run_command("Invite a Device by URL")
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input.jp-Parallalx-inviteUrl").fill(alice.peer_url)
    lab_page.shot("01-input-dialog")
    dialog.get_by_role("button", name="Send request").click()

    def alice_incoming() -> dict[str, Any] | None:
        pending = alice.api("GET", "requests?direction=incoming&state=pending")
        return next((r for r in pending if r["peer"]["name"] == "main-desktop"), None)

    incoming = wait_for(alice_incoming, timeout=10)
    out_card = lab_page.section("requests").locator(
        f'.jp-Parallalx-outgoingRequest[data-request-id="{incoming["id"]}"]'
    )
    out_card.wait_for(timeout=5000)
    # both screens show the same code
    assert out_card.locator(".jp-Parallalx-code").inner_text() == code_text(incoming["code"])
    lab_page.toast(incoming["code"]).wait_for(timeout=2000)
    lab_page.shot("02-outgoing")

    alice.api("POST", f"requests/{incoming['id']}/reject", {})
    out_card.wait_for(state="detached", timeout=10_000)
    assert lab.api("GET", f"requests/{incoming['id']}")["state"] == "rejected"
    lab_page.shot("03-rejected-by-peer")


def test_cluster_add_this_device_and_stop(lab_page: LabPage, lab: LocalDevice) -> None:
    lab_id = lab.api("GET", "device")["id"]
    section = lab_page.section("cluster")
    section.scroll_into_view_if_needed()
    address = section.locator(".jp-Parallalx-schedulerAddress")
    address.wait_for(timeout=10_000)  # the scheduler may run already (pairing starts it)
    lab_page.shot("01-before")

    add = section.get_by_role("button", name="Add this device")
    add.wait_for()
    add.click()
    address.filter(has_text="tls://127.0.0.1:").wait_for(timeout=30_000)
    group = section.locator(f'.jp-Parallalx-workerGroup[data-device-id="{lab_id}"]')
    group.wait_for(timeout=30_000)
    assert group.locator(".jp-Parallalx-workerDevice").inner_text() == "main-desktop"
    assert group.locator(".jp-Parallalx-worker").count() == 1
    assert group.locator(".jp-Parallalx-badge", has_text="this device").count() == 1
    # its own worker is in: nothing more to add
    assert section.get_by_role("button", name="This device trains").is_disabled()
    assert lab.api("GET", "cluster")["scheduler_address"] == address.inner_text()
    link = section.locator("a.jp-Parallalx-dashboardLink")
    if link.count() > 0:
        assert link.get_attribute("rel") == "noopener noreferrer"
        assert link.get_attribute("href", timeout=1000).startswith(("http://", "https://", "/"))
    assert section.locator(".jp-Parallalx-clusterError").is_hidden()
    lab_page.shot("02-running-with-this-device")

    section.get_by_role("button", name="Stop").click()
    address.filter(has_text="not running").wait_for(timeout=30_000)
    assert section.locator(".jp-Parallalx-workerGroup").count() == 0
    assert lab.api("GET", "cluster")["running"] is False
    lab_page.shot("03-stopped")


# -- jobs: this test plays the job's owner (a kernel's reporter) over the REST API --

JOB_OWNER = {"kind": "kernel", "pid": 4242, "host": "laptop"}
POINTS = re.compile(r"^-?\d+(\.\d+)?,-?\d+(\.\d+)?$")


def register_job(lab: LocalDevice, name: str, workload: str = "train") -> dict[str, Any]:
    body = {
        "id": f"ui-{uuid.uuid4().hex[:12]}",
        "workload": workload,
        "name": name,
        "owner": JOB_OWNER,
    }
    return lab.api("POST", "jobs", body)


def report(lab: LocalDevice, job_id: str, **body: Any) -> dict[str, Any]:
    return lab.api("POST", f"jobs/{job_id}/progress", body)


def job_card(lab_page: LabPage, job_id: str) -> Any:
    return lab_page.section("jobs").locator(f'.jp-Parallalx-job[data-job-id="{job_id}"]')


def test_jobs_progress_cancel_and_remove(lab_page: LabPage, lab: LocalDevice) -> None:
    section = lab_page.section("jobs")
    section.scroll_into_view_if_needed()
    if lab.api("GET", "jobs") == []:
        empty = section.locator(".jp-Parallalx-noJobs")
        empty.wait_for(timeout=5000)
        assert "No jobs yet" in empty.inner_text()
        assert "%%parallalx train" in empty.inner_text()
        lab_page.shot("01-no-jobs")

    job = register_job(lab, "digits MLP")
    job_id = job["id"]
    card = job_card(lab_page, job_id)
    card.wait_for(timeout=3000)  # job-progress event → GET jobs
    assert section.locator(".jp-Parallalx-noJobs").is_hidden()
    losses = [2.3, 1.9, 1.6, 1.2, 1.0, 0.8]
    for i, step in enumerate((10, 20, 30)):
        answer = report(
            lab,
            job_id,
            state="running",
            progress={
                "step": step,
                "total": 100,
                "loss": losses[2 * i + 1],
                "samples_per_s": 900.0,
                "eta_s": 65,
                "workers": 2,
            },
            loss=losses[2 * i : 2 * i + 2],
        )
        assert answer == {"cancel_requested": False}
    card.locator(".jp-Parallalx-progressText").filter(has_text="step 30 / 100").wait_for(
        timeout=3000
    )
    assert card.get_attribute("data-state") == "running"
    assert card.locator(".jp-Parallalx-jobName").inner_text() == "digits MLP"
    assert card.locator(".jp-Parallalx-jobWorkload").inner_text() == "train"
    assert card.locator(".jp-Parallalx-jobState").inner_text() == "running"
    assert "30%" in card.locator(".jp-Parallalx-progressText").inner_text()
    assert card.locator('[role="progressbar"]').get_attribute("aria-valuenow") == "30"
    assert card.locator(".jp-Parallalx-jobRate").inner_text() == "900 samples/s"
    assert card.locator(".jp-Parallalx-jobEta").inner_text() == "1m 05s"
    assert card.locator(".jp-Parallalx-jobLoss").inner_text() == "0.8000"
    assert card.locator(".jp-Parallalx-jobWorkers").inner_text() == "2"
    assert card.locator(".jp-Parallalx-jobOwner").inner_text() == "kernel 4242 on laptop"
    line = card.locator("svg.jp-Parallalx-sparkline polyline")
    points = (line.get_attribute("points") or "").split()
    assert len(points) == len(losses) and all(POINTS.match(p) for p in points), points
    assert card.locator("svg.jp-Parallalx-sparkline").is_visible()
    assert card.locator(".jp-Parallalx-jobRemove").is_hidden()
    card.scroll_into_view_if_needed()
    lab_page.shot("02-running")

    cancel = card.get_by_role("button", name="Cancel")
    cancel.click()
    wait_for(lambda: lab.api("GET", f"jobs/{job_id}")["cancel_requested"], timeout=5)
    card.locator(".jp-Parallalx-jobState").filter(has_text="cancelling").wait_for(timeout=3000)
    assert card.locator(".jp-Parallalx-jobCancel").is_disabled()
    # the owner learns it from the answer to its next report
    assert report(lab, job_id, state="running", progress={"step": 31}) == {"cancel_requested": True}
    card.scroll_into_view_if_needed()
    lab_page.shot("03-cancelling")

    report(lab, job_id, state="cancelled", error="cancelled by the user")
    card.locator(".jp-Parallalx-jobState").filter(has_text="cancelled").wait_for(timeout=3000)
    assert card.get_attribute("data-state") == "cancelled"
    assert card.locator(".jp-Parallalx-jobCancel").is_hidden()
    assert card.locator(".jp-Parallalx-jobError").inner_text() == "cancelled by the user"
    remove = card.get_by_role("button", name="Remove")
    remove.wait_for()
    card.scroll_into_view_if_needed()
    lab_page.shot("04-cancelled")

    remove.click()
    card.wait_for(state="detached", timeout=5000)
    assert all(j["id"] != job_id for j in lab.api("GET", "jobs"))
    lab_page.shot("05-removed")


def test_jobs_hostile_name_and_error_render_as_text(lab_page: LabPage, lab: LocalDevice) -> None:
    page = lab_page.page
    job = register_job(lab, HOSTILE_NAME, workload="sweep")
    job_id = job["id"]
    report(
        lab,
        job_id,
        state="running",
        progress={"fraction": 0.5, "message": "<b>bold</b> status"},
        loss=[1.0, 0.5],
    )
    report(lab, job_id, state="failed", error='<script>alert("e")</script> CUDA out of memory')
    card = job_card(lab_page, job_id)
    card.locator(".jp-Parallalx-jobError").filter(has_text="CUDA out of memory").wait_for(
        timeout=3000
    )
    assert card.get_attribute("data-state") == "failed"
    assert card.locator(".jp-Parallalx-jobName").inner_text() == HOSTILE_NAME
    assert card.locator(".jp-Parallalx-jobState").inner_text() == "failed"
    assert card.locator(".jp-Parallalx-jobError").inner_text() == (
        '<script>alert("e")</script> CUDA out of memory'
    )
    assert card.locator(".jp-Parallalx-jobMessage").inner_text() == "<b>bold</b> status"
    assert card.locator(".jp-Parallalx-progressText").inner_text() == "50%"
    assert page.locator('img[src="x"]').count() == 0
    assert page.locator("#parallalx-jupyter-panel :is(img, b, script)").count() == 0
    assert page.evaluate("document.querySelectorAll('[onerror]').length") == 0
    card.scroll_into_view_if_needed()
    lab_page.shot("01-failed-hostile-job")

    card.get_by_role("button", name="Remove").click()
    card.wait_for(state="detached", timeout=5000)
    assert all(j["id"] != job_id for j in lab.api("GET", "jobs"))
