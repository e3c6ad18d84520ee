"""The Jobs section's "Run a workload" form in a real JupyterLab, running a real installed
workload (docs/examples/parallalx-example-workload, ``pi``) on a plain Dask cluster.

Runs twice, like every UI test: with the server at `/` and under `ServerApp.base_url`.
Screenshots go to test-artifacts/ui/<variant>/<test>/.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from local_dask import local_dask_client
from ui_helpers import LabPage

from parallalx_jupyter.local_device import LocalDevice, wait_for

# lab + page start, a job on a 2-worker cluster, on a machine that may be busy
pytestmark = pytest.mark.timeout(420)

SAMPLES_ERROR = "pi: parameter 'samples': 5 is less than the minimum of 1000"


@pytest.fixture(scope="module", autouse=True)
def _workload_installed(example_workload: Path) -> Path:
    """Install the example workload before this module's lab server starts (autouse fixtures
    come first in their scope), so the lab, and the job processes it spawns, inherit the
    PYTHONPATH that finds it. The other UI modules do not pay for the install."""
    return example_workload


@pytest.fixture(scope="module")
def plain_cluster(example_workload: Path) -> Iterator[Any]:
    """A plain `distributed` cluster whose workers can import the plugin's tasks."""
    with local_dask_client() as client:
        yield client


def run_posts(page: Any) -> tuple[list[str], Any]:
    """Record the page's POSTs to workloads/*/run (the list, and the listener to remove)."""
    seen: list[str] = []

    def on_request(request: Any) -> None:
        if request.method == "POST" and "/parallalx/api/workloads/" in request.url:
            seen.append(request.url)

    page.on("request", on_request)
    return seen, on_request


def test_run_a_workload_from_the_jobs_section(
    example_workload: Path, lab_page: LabPage, lab: LocalDevice, plain_cluster: Any
) -> None:
    page = lab_page.page
    section = lab_page.section("jobs")
    section.scroll_into_view_if_needed()
    form = section.locator(".jp-Parallalx-runForm")
    toggle = section.locator(".jp-Parallalx-runToggle")
    toggle.wait_for(timeout=10_000)
    assert toggle.inner_text().strip() == "Run a workload…"
    assert form.is_hidden()  # collapsed until asked for
    assert toggle.get_attribute("aria-expanded") == "false"

    # open: the workloads come from GET workloads, pi is selected with its defaults
    listed = {w["name"]: w for w in lab.api("GET", "workloads")}
    assert listed["pi"]["error"] is None
    toggle.click()
    form.wait_for(state="visible")
    assert toggle.get_attribute("aria-expanded") == "true"
    select = form.locator("select.jp-Parallalx-workloadSelect")
    select.locator('option[value="pi"]').wait_for(state="attached", timeout=10_000)
    options = select.locator("option").evaluate_all(
        "os => os.map(o => ({value: o.value, disabled: o.disabled, title: o.title}))"
    )
    assert [o["value"] for o in options] == list(listed)
    for option in options:
        error = listed[option["value"]]["error"]
        assert option["disabled"] == (error is not None)
        if error is not None:
            assert option["title"] == error
    select.select_option("pi")
    description = form.locator(".jp-Parallalx-workloadDescription")
    assert description.inner_text() == listed["pi"]["description"]
    params = form.locator("textarea.jp-Parallalx-workloadParams")
    assert json.loads(params.input_value()) == {"samples": 1_000_000, "chunk": 100_000, "seed": 0}
    assert params.input_value() == json.dumps(
        {"samples": 1_000_000, "chunk": 100_000, "seed": 0}, indent=2
    )
    help_text = form.locator(".jp-Parallalx-workloadParamsHelp").inner_text()
    assert "samples: integer, ≥ 1000" in help_text
    error = form.locator(".jp-Parallalx-runError")
    assert error.is_hidden()
    form.scroll_into_view_if_needed()
    lab_page.shot("01-form-open")

    jobs_before = {j["id"] for j in lab.api("GET", "jobs")}
    posts, listener = run_posts(page)
    run = form.get_by_role("button", name="Run", exact=True)
    try:
        # invalid JSON: an inline error, no request
        params.fill('{"samples": 200000,')
        run.click()
        error.filter(has_text="Parameters are not valid JSON").wait_for(timeout=3000)
        page.wait_for_timeout(500)
        assert posts == []
        form.scroll_into_view_if_needed()
        lab_page.shot("02-invalid-json")

        # a value the workload refuses: the server's line, inline, and no job
        params.fill('{"samples": 5}')
        run.click()
        error.filter(has_text=SAMPLES_ERROR).wait_for(timeout=10_000)
        assert error.inner_text().strip() == SAMPLES_ERROR
        # (JupyterLab may add a numeric cache-buster query)
        assert [urlsplit(url).path for url in posts] == [
            lab.base_url.rstrip("/") + "/parallalx/api/workloads/pi/run"
        ]
        assert {j["id"] for j in lab.api("GET", "jobs")} == jobs_before
        form.scroll_into_view_if_needed()
        lab_page.shot("03-refused-by-the-server")

        # a good run on the plain cluster: the job appears and finishes
        name = f"ui pi {uuid.uuid4().hex[:6]}"
        params.fill('{"samples": 200000, "chunk": 20000}')
        form.locator("input.jp-Parallalx-runName").fill(name)
        form.locator("input.jp-Parallalx-runScheduler").fill(plain_cluster.scheduler.address)
        run.click()
        error.wait_for(state="hidden", timeout=10_000)
        assert len(posts) == 2
    finally:
        page.remove_listener("request", listener)

    def new_job() -> dict[str, Any] | None:
        return next((j for j in lab.api("GET", "jobs") if j["name"] == name), None)

    job = wait_for(new_job, timeout=10)
    assert job["id"] not in jobs_before
    assert job["workload"] == "pi" and job["owner"]["kind"] == "server"
    card = section.locator(f'.jp-Parallalx-job[data-job-id="{job["id"]}"]')
    card.wait_for(timeout=5000)
    assert card.locator(".jp-Parallalx-jobName").inner_text() == name
    assert card.locator(".jp-Parallalx-jobWorkload").inner_text() == "pi"
    assert name in form.locator(".jp-Parallalx-runStarted").inner_text()
    card.scroll_into_view_if_needed()
    lab_page.shot("04-started")

    section.locator(
        f'.jp-Parallalx-job[data-job-id="{job["id"]}"][data-state="finished"]'
    ).wait_for(timeout=60_000)
    done = lab.api("GET", f"jobs/{job['id']}")
    assert done["state"] == "finished", done
    assert done["owner"]["kind"] == "server"
    assert done["progress"]["step"] == 200_000
    assert card.locator(".jp-Parallalx-jobState").inner_text() == "finished"
    assert "pi ~ 3.1" in card.locator(".jp-Parallalx-jobMessage").inner_text()
    assert card.locator(".jp-Parallalx-jobOwner").inner_text().startswith("server ")
    card.scroll_into_view_if_needed()
    lab_page.shot("05-finished")

    # tidy up for the next variant's page state, through the panel
    card.get_by_role("button", name="Remove").click()
    card.wait_for(state="detached", timeout=5000)
    assert all(j["id"] != job["id"] for j in lab.api("GET", "jobs"))
    toggle.click()
    form.wait_for(state="hidden")
