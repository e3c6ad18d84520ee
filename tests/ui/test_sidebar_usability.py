"""The sidebar with many requests, the sender's side, device names and the Dask dashboard
(issue 17): real JupyterLab, real peer devices, Chromium. Runs at `/` and under a base_url.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_helpers import LabPage

from parallalx_jupyter.local_device import LocalDevice, wait_for


@pytest.fixture(scope="module")
def senders(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalDevice]]:
    """Three devices that each send the lab one request (one pending request per sender)."""
    root = Path(tmp_path_factory.mktemp("senders"))
    devices = [LocalDevice(home=root / f"s{i}", name=f"laptop-{i}") for i in (1, 2, 3)]
    threads = [threading.Thread(target=d.start, kwargs={"timeout": 90}) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    yield devices
    for d in devices:
        d.stop()


def toasts(page: Any, text: str) -> Any:
    return page.locator(".Toastify__toast").filter(has_text=text)


def test_many_requests_one_notification_compact_rows_and_reject_all(
    lab_page: LabPage, lab: LocalDevice, senders: list[LocalDevice], browser: Any
) -> None:
    sent = [s.api("POST", "invitations", {"url": lab.peer_url, "asks": {
        "purpose": "x" * 300, "nthreads": 2}}) for s in senders]
    section = lab_page.section("requests")
    for r in sent:
        section.locator(f'[data-request-id="{r["id"]}"]').wait_for(timeout=5000)

    # a Lab opened while they wait: one notification with the count, not one per request
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        fresh = LabPage(context.new_page(), lab)  # records the page's errors
        page = fresh.page
        page.goto(f"{lab.url}/lab?token={lab.token}")
        page.locator("#jupyterlab-splash").wait_for(state="detached", timeout=90_000)
        count = toasts(page, "3 connection requests waiting")
        count.wait_for(timeout=10_000)
        assert toasts(page, "Parallalx code").count() == 0  # no per-request toast
        assert count.count() == 1

        # decided elsewhere: the same notification says 2, then shows the last one's code
        lab.api("POST", f"requests/{sent[0]['id']}/reject", {})
        toasts(page, "2 connection requests waiting").wait_for(timeout=10_000)
        assert toasts(page, "3 connection requests waiting").count() == 0
        lab.api("POST", f"requests/{sent[1]['id']}/reject", {})
        last = sent[2]["code"]
        toasts(page, f"{last[:3]} {last[3:]}").wait_for(timeout=10_000)
        assert toasts(page, "requests waiting").count() == 0
        lab.api("POST", f"requests/{sent[2]['id']}/reject", {})
        toasts(page, f"{last[:3]} {last[3:]}").wait_for(state="detached", timeout=10_000)
        assert not fresh.errors, fresh.errors
    finally:
        context.close()

    # this device's peer address, at a glance above the sections, with Copy
    header = lab_page.panel.locator(".jp-Parallalx-peerAddress")
    assert header.locator(".jp-Parallalx-peerAddressUrl").inner_text() == (
        lab.api("GET", "device")["peer_urls"][0])
    header.get_by_role("button", name="Copy").click()
    header.get_by_role("button", name="Copied").wait_for(timeout=3000)

    # compact rows: one line each, Accept in sight; a click opens the details
    sent = [s.api("POST", "invitations", {"url": lab.peer_url, "asks": {
        "purpose": "p" * 300}}) for s in senders]
    page = lab_page.page
    cards = [section.locator(f'[data-request-id="{r["id"]}"]') for r in sent]
    for card in cards:
        card.wait_for(timeout=5000)
    toasts(page, "3 connection requests waiting").wait_for(timeout=5000)
    assert toasts(page, "Parallalx code").count() == 0
    section.locator(".jp-Parallalx-subheader", has_text="Incoming (3)").wait_for()
    first = cards[0]
    assert first.locator(".jp-Parallalx-details").is_hidden()
    assert first.locator(".jp-Parallalx-accept").is_visible()
    line_height = first.locator(".jp-Parallalx-requestLine").bounding_box()["height"]
    card_height = first.bounding_box()["height"]
    assert card_height < 100, card_height  # a long purpose does not make the row tall
    assert line_height <= card_height
    first.locator(".jp-Parallalx-peerName").click()
    first.locator(".jp-Parallalx-peerId").wait_for()
    assert "p" * 50 in first.locator(".jp-Parallalx-purpose").inner_text()
    assert first.locator(".jp-Parallalx-expand").get_attribute("aria-expanded") == "true"
    lab_page.shot("01-compact-rows")

    # Reject all asks first; Cancel keeps them
    reject_all = section.get_by_role("button", name="Reject all")
    reject_all.click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for()
    assert "Reject all 3" in dialog.inner_text()
    assert page.evaluate("document.activeElement.textContent").strip() == "Cancel"
    lab_page.shot("02-reject-all-confirm")
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached")
    assert all(lab.api("GET", f"requests/{r['id']}")["state"] == "pending" for r in sent)
    reject_all.click()
    dialog.get_by_role("button", name="Reject 3").click()
    wait_for(lambda: all(lab.api("GET", f"requests/{r['id']}")["state"] == "rejected"
                         for r in sent), timeout=10)
    section.locator(".jp-Parallalx-empty").wait_for(timeout=5000)
    toasts(page, "requests waiting").wait_for(state="detached", timeout=5000)
    assert reject_all.is_hidden()
    lab_page.shot("03-all-rejected")


def test_invite_with_asks_decision_toast_device_names_revoke_and_dashboard(
    lab_page: LabPage, lab: LocalDevice, senders: list[LocalDevice]
) -> None:
    worker = senders[0]  # laptop-1: will run a worker for the lab
    page = lab_page.page
    lab_page.panel.locator(".jp-Toolbar-item").filter(has_text="Invite").first.click()
    dialog = page.locator(".jp-Dialog")
    dialog.locator("input.jp-Parallalx-inviteUrl").fill(worker.peer_url)
    dialog.locator("input.jp-Parallalx-invitePurpose").fill("digits MLP")
    dialog.locator("input.jp-Parallalx-inviteThreads").fill("2")
    lab_page.shot("01-invite-dialog")
    dialog.get_by_role("button", name="Send request").click()

    def incoming() -> dict[str, Any] | None:
        pending = worker.api("GET", "requests?direction=incoming&state=pending")
        return next((r for r in pending if r["peer"]["name"] == "main-desktop"), None)

    request = wait_for(incoming, timeout=10)
    assert request["asks"]["purpose"] == "digits MLP" and request["asks"]["nthreads"] == 2

    # the other side accepts: the inviter is told
    worker.api("POST", f"requests/{request['id']}/accept", {})
    toasts(page, "“laptop-1” accepted your request").wait_for(timeout=10_000)
    lab_page.shot("02-accepted-toast")

    # workers and ranks are named by device, never by address
    worker_id = worker.api("GET", "device")["id"]
    cluster = lab_page.section("cluster")
    group = cluster.locator(f'.jp-Parallalx-workerGroup[data-device-id="{worker_id}"]')
    group.wait_for(timeout=60_000)
    cluster.scroll_into_view_if_needed()
    assert group.locator(".jp-Parallalx-workerDevice").inner_text() == "laptop-1"
    assert group.locator(".jp-Parallalx-workerName").first.inner_text().startswith("laptop-1")
    workers_text = cluster.locator(".jp-Parallalx-workers").inner_text()
    assert "tls://" not in workers_text and worker_id not in workers_text
    lab_page.shot("03-cluster-names")

    # the Dask dashboard, through this Jupyter server (under its base_url), renders live
    link = cluster.locator("a.jp-Parallalx-dashboardLink")
    link.wait_for(timeout=10_000)
    href = link.get_attribute("href") or ""
    assert href.startswith(lab.url + "/parallalx/dashboard/status") or href.endswith(
        "/parallalx/dashboard/status"), href
    with page.context.expect_page() as opened:
        link.click()
    dashboard = opened.value
    try:
        dashboard.wait_for_load_state()
        assert dashboard.url.startswith(f"{lab.url}/parallalx/dashboard/status")
        dashboard.locator("canvas").first.wait_for(timeout=60_000)  # bokeh's websocket works
    finally:
        dashboard.close()

    # Revoke says whom; its dialog has Cancel focused, so Enter does not revoke
    card = lab_page.section("devices").locator(
        f'.jp-Parallalx-pairedDevice[data-device-id="{worker_id}"][data-state="paired"]')
    card.wait_for(timeout=5000)
    revoke = card.locator(".jp-Parallalx-revoke")
    assert revoke.inner_text() == "Revoke laptop-1"
    revoke.click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for()
    assert "laptop-1" in dialog.inner_text()
    assert page.evaluate("document.activeElement.textContent").strip() == "Cancel"
    lab_page.shot("04-revoke-dialog")
    page.keyboard.press("Enter")
    dialog.wait_for(state="detached")
    assert lab.api("GET", f"devices/{worker_id}")["state"] == "paired"
    revoke.click()
    dialog.get_by_role("button", name="Revoke").click()
    wait_for(lambda: lab.api("GET", f"devices/{worker_id}")["state"] == "revoked", timeout=10)

