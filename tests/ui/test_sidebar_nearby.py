"""The sidebar's Nearby section in a real JupyterLab: a device that announces itself on the
network shows up with its name and address, and its Invite button opens the invite dialog with
its peer URL filled in; sending it makes a real request that the other device must still accept.

Runs twice, like the other sidebar tests: with the server at `/` and under a `base_url`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ui_helpers import LabPage

from parallalx_jupyter.local_device import LocalDevice, wait_for


def test_nearby_device_listed_and_invited(
    lab_page: LabPage, lab: LocalDevice, tmp_path: Path
) -> None:
    box = LocalDevice(home=tmp_path / "box", name="nearby-box",
                      extra_config={"discoverable": True}).start(timeout=90)
    try:
        box_id = box.api("GET", "device")["id"]
        wait_for(lambda: any(r["id"] == box_id for r in lab.api("GET", "nearby")), 30, 0.3)
        page = lab_page.page
        lab_page.run_command("Refresh Parallalx")
        card = lab_page.section("nearby").locator(
            f'.jp-Parallalx-nearbyDevice[data-device-id="{box_id}"]'
        )
        card.wait_for(timeout=15_000)
        assert card.locator(".jp-Parallalx-peerName").inner_text() == "nearby-box"
        assert f"127.0.0.1:{box.peer_port}" in card.inner_text()
        lab_page.shot("01-nearby")

        card.get_by_role("button", name="Invite").click()
        dialog = page.locator(".jp-Dialog")
        url_input = dialog.locator(".jp-Parallalx-inviteUrl")
        url_input.wait_for(timeout=5000)
        assert url_input.input_value() == box.peer_url
        lab_page.shot("02-invite-dialog")
        dialog.get_by_role("button", name="Send request").click()

        def incoming() -> dict[str, Any] | None:
            pending = box.api("GET", "requests?direction=incoming&state=pending")
            return next((r for r in pending if r["peer"]["name"] == "main-desktop"), None)

        request = wait_for(incoming, timeout=15)
        out_card = lab_page.section("requests").locator(
            f'.jp-Parallalx-outgoingRequest[data-request-id="{request["id"]}"]'
        )
        out_card.wait_for(timeout=10_000)
        code = request["code"]
        assert out_card.locator(".jp-Parallalx-code").inner_text() == f"{code[:3]} {code[3:]}"
        assert box.api("GET", "devices") == []  # nothing pairs without the other user
        box.api("POST", f"requests/{request['id']}/reject", {})
        out_card.wait_for(state="detached", timeout=15_000)
    finally:
        box.stop()
