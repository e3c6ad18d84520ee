"""A job's Output in the Jobs section of a real JupyterLab: what the ranks of a `px.launch` job
print, forwarded by its owner (played here over the REST API), shown per job with rank prefixes
and kept fresh from job-progress events while it is open.

Runs twice, like every UI test: with the server at `/` and under `ServerApp.base_url`.
Screenshots go to test-artifacts/ui/<variant>/<test>/.
"""

from __future__ import annotations

import uuid
from typing import Any

from ui_helpers import HOSTILE_NAME, LabPage

from parallalx_jupyter.local_device import LocalDevice, wait_for

OWNER = {"kind": "python", "pid": 31337, "host": "laptop"}


def register_launch_job(lab: LocalDevice, name: str) -> dict[str, Any]:
    body = {"id": f"ui-out-{uuid.uuid4().hex[:12]}", "workload": "launch", "name": name,
            "owner": OWNER}
    return lab.api("POST", "jobs", body)


def post_output(lab: LocalDevice, job_id: str, *lines: tuple[int, str, str, str],
                **body: Any) -> dict[str, Any]:
    """One progress post of the owner carrying these (rank, device, stream, line) lines."""
    output = [{"rank": r, "device": d, "stream": s, "line": text} for r, d, s, text in lines]
    return lab.api("POST", f"jobs/{job_id}/progress", {"output": output, **body})


def pre_lines(card: Any) -> list[str]:
    return card.locator(".jp-Parallalx-jobOutputLines .jp-Parallalx-outputLine").evaluate_all(
        "nodes => nodes.map(n => n.textContent.replace(/\\n$/, ''))"
    )


def scroll_state(card: Any) -> dict[str, float]:
    return card.locator(".jp-Parallalx-jobOutputLines").evaluate(
        "n => ({top: n.scrollTop, height: n.scrollHeight, client: n.clientHeight})"
    )


def test_job_output_lines_per_rank_live(lab_page: LabPage, lab: LocalDevice) -> None:
    section = lab_page.section("jobs")
    section.scroll_into_view_if_needed()
    job = register_launch_job(lab, "launch: my train()")
    job_id = job["id"]
    assert "output" not in next(j for j in lab.api("GET", "jobs") if j["id"] == job_id)
    assert lab.api("GET", f"jobs/{job_id}")["output"] == []
    post_output(lab, job_id, state="running", progress={"workers": 2})

    card = section.locator(f'.jp-Parallalx-job[data-job-id="{job_id}"]')
    card.wait_for(timeout=5000)
    toggle = card.get_by_role("button", name="Output")
    region = card.locator(".jp-Parallalx-jobOutput")
    assert toggle.get_attribute("aria-expanded") == "false"
    assert region.is_hidden()
    assert toggle.get_attribute("aria-controls") == region.get_attribute("id")

    # opened before anything was printed
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    status = card.locator(".jp-Parallalx-jobOutputStatus")
    status.filter(has_text="No output yet.").wait_for(timeout=5000)
    assert card.locator(".jp-Parallalx-jobOutputLines").is_hidden()

    # two ranks print; one line on stderr, one that looks like markup
    post_output(
        lab,
        job_id,
        (0, "alpha", "stdout", "epoch 1 loss 0.52"),
        (1, "bravo", "stdout", "epoch 2 loss 0.31"),
        (1, "bravo", "stderr", "UserWarning: slow dataloader"),
        (0, "", "stdout", HOSTILE_NAME),
        progress={"step": 2, "total": 10},
    )
    lines = card.locator(".jp-Parallalx-jobOutputLines")
    lines.filter(has_text="[rank 1 bravo] epoch 2 loss 0.31").wait_for(timeout=5000)
    assert status.is_hidden()
    assert pre_lines(card) == [
        "[rank 0 alpha] epoch 1 loss 0.52",
        "[rank 1 bravo] epoch 2 loss 0.31",
        "[rank 1 bravo] UserWarning: slow dataloader",
        f"[rank 0] {HOSTILE_NAME}",
    ]
    stderr = card.locator(".jp-Parallalx-outputLine.jp-mod-stderr")
    assert stderr.count() == 1
    assert stderr.inner_text().strip() == "[rank 1 bravo] UserWarning: slow dataloader"
    assert lines.locator("img").count() == 0  # the line is text, not markup
    assert "monospace" in lines.evaluate("n => getComputedStyle(n).fontFamily")
    assert lines.evaluate("n => n.tagName") == "PRE"
    lines.scroll_into_view_if_needed()
    lab_page.shot("01-output-open")

    # more lines come in while it is open: shown without a reload, the view follows them
    post_output(
        lab,
        job_id,
        *[(i % 2, "alpha" if i % 2 == 0 else "bravo", "stdout", f"step {i} loss {1 / i:.3f}")
          for i in range(3, 63)],
        progress={"step": 8, "total": 10},
    )
    lines.filter(has_text="[rank 0 alpha] step 62 loss 0.016").wait_for(timeout=5000)
    assert len(pre_lines(card)) == 64
    wait_for(lambda: (s := scroll_state(card))["height"] - s["top"] - s["client"] <= 8,
             timeout=5)
    s = scroll_state(card)
    assert s["height"] > s["client"] + 100, s  # scrolls in its box: the card stays compact

    # scrolled up to read: new lines do not pull the view down
    lines.evaluate("n => { n.scrollTop = 0; }")
    post_output(lab, job_id, (1, "bravo", "stdout", "step 63 late line"))
    lines.filter(has_text="[rank 1 bravo] step 63 late line").wait_for(timeout=5000)
    assert scroll_state(card)["top"] == 0
    card.locator(".jp-Parallalx-actions").scroll_into_view_if_needed()
    lab_page.shot("02-more-lines")

    # closed: hidden, and nothing more is fetched for it
    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "false"
    region.wait_for(state="hidden", timeout=3000)
    fetched: list[str] = []

    def on_request(request: Any) -> None:
        if request.method == "GET" and request.url.split("?")[0].endswith(f"/jobs/{job_id}"):
            fetched.append(request.url)

    lab_page.page.on("request", on_request)
    try:
        post_output(lab, job_id, (0, "alpha", "stdout", "after close"))
        lab_page.page.wait_for_timeout(1500)
    finally:
        lab_page.page.remove_listener("request", on_request)
    assert fetched == []
    lab_page.shot("03-closed")

    # opened again after the job ended: the lines are all there
    post_output(lab, job_id, (0, "alpha", "stdout", "done"), state="finished")
    card.locator(".jp-Parallalx-jobState").filter(has_text="finished").wait_for(timeout=5000)
    toggle.click()
    lines.filter(has_text="[rank 0 alpha] done").wait_for(timeout=5000)
    assert pre_lines(card)[-3:] == [
        "[rank 1 bravo] step 63 late line",
        "[rank 0 alpha] after close",
        "[rank 0 alpha] done",
    ]
    toggle.click()
    region.wait_for(state="hidden", timeout=3000)

    card.get_by_role("button", name="Remove").click()
    card.wait_for(state="detached", timeout=5000)
