"""Invited again by a device it already serves, and refused by its scheduler (issue 17 items 2
and 3), as the lab's user sees it: the request row says "already paired", accepting keeps the
worker, a refused join shows why with a Retry button, and it joins again by itself."""

from __future__ import annotations

from typing import Any

from ui_helpers import LabPage

from parallalx_jupyter.cluster.tls import RevocationList
from parallalx_jupyter.local_device import LocalDevice, wait_for


def _serving(lab: LocalDevice, main_id: str) -> dict[str, Any]:
    return next((s for s in lab.api("GET", "cluster")["serving"] if s["main_id"] == main_id), {})


def _invite(main: LocalDevice, lab: LocalDevice) -> dict[str, Any]:
    sent = main.api("POST", "invitations", {"url": lab.peer_url, "asks": {"nthreads": 1}})
    return lab.api("GET", f"requests/{sent['id']}")


def test_reinvite_says_already_paired_and_a_refused_join_has_retry(
    lab_page: LabPage, lab: LocalDevice, peers: dict[str, LocalDevice]
) -> None:
    main = peers["alice"]  # alice-laptop: the main device the lab works for
    main_id, lab_id = main.api("GET", "device")["id"], lab.api("GET", "device")["id"]
    first = _invite(main, lab)
    lab.api("POST", f"requests/{first['id']}/accept", {"shown_hash": first["shown_hash"]})
    wait_for(lambda: _serving(lab, main_id).get("state") == "running", 90)

    # invited again: the row says so before anyone accepts
    again = _invite(main, lab)
    row = lab_page.section("requests").locator(f'[data-request-id="{again["id"]}"]')
    row.wait_for(timeout=10_000)
    badge = row.locator(".jp-Parallalx-alreadyPaired")
    badge.wait_for(state="visible", timeout=5000)
    assert badge.inner_text() == "already paired"
    lab_page.shot("01-already-paired")
    lab.api("POST", f"requests/{again['id']}/accept", {"shown_hash": again["shown_hash"]})
    wait_for(lambda: _serving(lab, main_id).get("request_id") == again["id"], 30)
    assert _serving(lab, main_id)["state"] == "running"

    # the main device's scheduler refuses the worker: the card says why and offers Retry
    revocations = RevocationList.in_dir(main.home / "state" / "cluster")
    revocations.revoke_device(lab_id, "stale")
    card = lab_page.section("cluster").locator(
        f'.jp-Parallalx-servedMain[data-main-id="{main_id}"][data-state="refused"]')
    card.wait_for(timeout=30_000)
    card.scroll_into_view_if_needed()
    assert "refused by the main device" in card.inner_text()
    assert "revoked" in card.locator(".jp-Parallalx-servedMessage").inner_text()
    retry = card.locator(".jp-Parallalx-retryJoin")
    assert retry.inner_text() == "Retry alice-laptop"
    lab_page.shot("02-refused-with-retry")
    revocations.unrevoke_device(lab_id)  # as accepting the device again does
    retry.click()
    running = lab_page.section("cluster").locator(
        f'.jp-Parallalx-servedMain[data-main-id="{main_id}"][data-state="running"]')
    running.wait_for(timeout=30_000)
    assert running.locator(".jp-Parallalx-retryJoin").count() == 0
    lab_page.shot("03-joined-again")
