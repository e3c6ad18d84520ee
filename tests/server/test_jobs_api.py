"""The jobs REST API on a real in-process Jupyter server: the list every surface shares.

A job's owner (a kernel, the CLI) registers it and posts progress; users list, cancel and
remove it. These tests play the owner over HTTP exactly as ``jobs.reporter`` does; the
reporter itself, driven by a real training job, is tested in tests/jobs.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from test_local_api import _assert_error, _json, fetch

OWNER = {"kind": "kernel", "pid": 4242, "host": "laptop"}


def job_body(job_id: str = "job1", **kw: Any) -> dict[str, Any]:
    return {"id": job_id, "workload": "train", "name": "digits MLP", "owner": OWNER, **kw}


async def register(jp_fetch: Any, job_id: str = "job1", **kw: Any) -> dict[str, Any]:
    r = await fetch(jp_fetch, "jobs", method="POST", body=job_body(job_id, **kw))
    assert r.code == 201, r.body
    return _json(r)


async def progress(jp_fetch: Any, job_id: str, body: dict[str, Any]) -> Any:
    return await fetch(jp_fetch, "jobs", job_id, "progress", method="POST", body=body)


async def test_register_progress_list_and_finish(jp_fetch: Any) -> None:
    job = await register(jp_fetch)
    assert job["state"] == "pending" and job["owner"] == OWNER
    assert job["progress"]["step"] is None and job["loss_history"] == []
    r = await progress(jp_fetch, "job1", {
        "state": "running",
        "progress": {"step": 10, "total": 100, "fraction": 0.1, "loss": 1.5,
                     "samples_per_s": 900.0, "eta_s": 12.0, "workers": 2},
        "loss": [2.0, 1.7, 1.5],
    })
    assert _json(r) == {"cancel_requested": False}
    r = await progress(jp_fetch, "job1", {"progress": {"step": 20, "loss": 1.2}, "loss": [1.2]})
    assert r.code == 200
    listed = _json(await fetch(jp_fetch, "jobs"))
    assert [j["id"] for j in listed] == ["job1"]
    p = listed[0]["progress"]
    assert (p["step"], p["total"], p["loss"], p["workers"]) == (20, 100, 1.2, 2)  # merged
    assert listed[0]["loss_history"] == [2.0, 1.7, 1.5, 1.2]
    assert listed[0]["state"] == "running"
    r = await progress(jp_fetch, "job1", {"state": "finished"})
    assert r.code == 200
    done = _json(await fetch(jp_fetch, "jobs", "job1"))
    assert done["state"] == "finished" and done["finished_at"] >= done["created_at"]
    # an ended job takes no more progress and cannot be cancelled
    _assert_error(await progress(jp_fetch, "job1", {"state": "running"}), 409, "ended")
    _assert_error(await fetch(jp_fetch, "jobs", "job1", "cancel", method="POST"), 409, "ended")


async def test_cancel_reaches_the_owner_through_its_next_post(jp_fetch: Any) -> None:
    await register(jp_fetch, "c1")
    await progress(jp_fetch, "c1", {"state": "running"})
    r = await fetch(jp_fetch, "jobs", "c1", "cancel", method="POST")
    job = _json(r)
    assert r.code == 200 and job["state"] == "cancelling" and job["cancel_requested"] is True
    # the owner had not seen it yet and says "running": the job stays "cancelling"
    assert _json(await progress(jp_fetch, "c1", {"state": "running"})) == {
        "cancel_requested": True
    }
    assert _json(await fetch(jp_fetch, "jobs", "c1"))["state"] == "cancelling"
    await progress(jp_fetch, "c1", {"state": "cancelled", "error": "cancelled by the user"})
    job = _json(await fetch(jp_fetch, "jobs", "c1"))
    assert job["state"] == "cancelled" and job["error"] == "cancelled by the user"


async def test_remove_only_ended_jobs(jp_fetch: Any) -> None:
    await register(jp_fetch, "r1")
    _assert_error(await fetch(jp_fetch, "jobs", "r1", method="DELETE"), 409, "cancel it first")
    await progress(jp_fetch, "r1", {"state": "failed", "error": "boom"})
    r = await fetch(jp_fetch, "jobs", "r1", method="DELETE")
    assert r.code == 204
    assert _json(await fetch(jp_fetch, "jobs")) == []
    _assert_error(await fetch(jp_fetch, "jobs", "r1"), 404, "no job")
    _assert_error(await fetch(jp_fetch, "jobs", "r1", method="DELETE"), 404, "no job")


@pytest.mark.parametrize("server_overrides", [{"ParallalxApp": {"job_stale_after": 0.5}}])
async def test_a_silent_owner_makes_the_job_lost_until_it_reports_again(jp_fetch: Any) -> None:
    await register(jp_fetch, "l1")
    await progress(jp_fetch, "l1", {"state": "running"})
    await asyncio.sleep(0.7)
    assert _json(await fetch(jp_fetch, "jobs", "l1"))["state"] == "lost"
    await progress(jp_fetch, "l1", {"progress": {"step": 3}})  # heartbeat: alive again
    assert _json(await fetch(jp_fetch, "jobs", "l1"))["state"] == "running"
    await asyncio.sleep(0.7)
    r = await fetch(jp_fetch, "jobs", "l1", method="DELETE")  # a lost job can be cleared
    assert r.code == 204


async def test_jobs_survive_a_restart_of_the_store(jp_fetch: Any, parallalx_app: Any) -> None:
    await register(jp_fetch, "p1")
    await progress(jp_fetch, "p1", {"state": "running", "loss": [1.0, 0.5]})
    row = parallalx_app.store.run_sync(
        lambda c: c.execute("SELECT state, loss_history FROM jobs WHERE id = 'p1'").fetchone()
    )
    assert row["state"] == "running" and row["loss_history"] == [1.0, 0.5]


async def test_long_loss_history_is_thinned_over_the_whole_run(jp_fetch: Any) -> None:
    await register(jp_fetch, "h1")
    for i in range(3):
        await progress(jp_fetch, "h1", {"loss": [float(i * 1000 + k) for k in range(1000)]})
    hist = _json(await fetch(jp_fetch, "jobs", "h1"))["loss_history"]
    assert len(hist) == 200
    assert hist[0] == 0.0 and hist[-1] >= 2900  # first and (nearly) last point of the run
    assert hist == sorted(hist)


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"id": "x"}, 400, "missing field"),
        ({**job_body("bad id!")}, 400, "job ID"),
        ({**job_body("x"), "extra": 1}, 400, "unexpected field"),
        ({**job_body("x"), "owner": {"kind": "alien", "pid": 1, "host": "h"}}, 400, "kind"),
        ({**job_body("x"), "name": "n" * 201}, 400, "name"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_bad_registrations_are_clear_400s(jp_fetch: Any, body, status, message) -> None:
    r = await fetch(jp_fetch, "jobs", method="POST", body=body)
    _assert_error(r, status, message)
    assert _json(await fetch(jp_fetch, "jobs")) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"state": "exploded"}, "state"),
        ({"progress": {"fraction": 2}}, "fraction"),
        ({"progress": {"loss": "low"}}, "loss"),
        ({"progress": {"step": -1}}, "step"),
        ({"progress": {"mood": "great"}}, "unexpected field"),
        ({"loss": [1, "NaN"]}, "loss"),
        ({"loss": [0.0] * 1001}, "loss"),
        ({"output": "hello"}, "output"),
        ({"output": [{"rank": 0, "device": "a", "stream": "stdout"}]}, "output[0]"),
        ({"output": [{"rank": -1, "device": "", "stream": "stdout", "line": "x"}]}, "rank"),
        ({"output": [{"rank": 0, "device": "", "stream": "tty", "line": "x"}]}, "stream"),
        ({"output": [{"rank": 0, "device": "", "stream": "stdout", "line": "x" * 4001}]},
         "line"),
        ({"output": [{"rank": 0, "device": "", "stream": "stdout", "line": "x"}] * 501},
         "output"),
    ],
)
async def test_bad_progress_is_refused_and_changes_nothing(jp_fetch: Any, body, message) -> None:
    await register(jp_fetch, "b1")
    _assert_error(await progress(jp_fetch, "b1", body), 400, message)
    job = _json(await fetch(jp_fetch, "jobs", "b1"))
    assert job["state"] == "pending" and job["loss_history"] == [] and job["output"] == []


async def test_output_lines_are_kept_per_job_and_shown_in_its_own_view(jp_fetch: Any) -> None:
    await register(jp_fetch, "o1", workload="launch")

    def lines(rank: int, n: int, start: int = 0, stream: str = "stdout") -> list[dict[str, Any]]:
        return [{"rank": rank, "device": "bravo", "stream": stream, "line": f"r{rank} {i}"}
                for i in range(start, start + n)]

    r = await progress(jp_fetch, "o1", {"state": "running", "output": lines(0, 3)})
    assert r.code == 200
    r = await progress(jp_fetch, "o1", {"output": lines(1, 1, stream="stderr")})
    assert r.code == 200
    job = _json(await fetch(jp_fetch, "jobs", "o1"))
    assert [x["line"] for x in job["output"]] == ["r0 0", "r0 1", "r0 2", "r1 0"]
    assert job["output"][-1] == {"rank": 1, "device": "bravo", "stream": "stderr",
                                 "line": "r1 0"}
    assert "output" not in _json(await fetch(jp_fetch, "jobs"))[0]  # the list stays small
    # the newest 500 are kept
    for start in range(0, 1000, 400):
        await progress(jp_fetch, "o1", {"output": lines(0, 400, start=start)})
    kept = _json(await fetch(jp_fetch, "jobs", "o1"))["output"]
    assert len(kept) == 500 and kept[0]["line"] == "r0 700" and kept[-1]["line"] == "r0 1199"


async def test_duplicate_and_unknown_ids(jp_fetch: Any) -> None:
    await register(jp_fetch, "d1")
    r = await fetch(jp_fetch, "jobs", method="POST", body=job_body("d1"))
    _assert_error(r, 409, "exists already")
    _assert_error(await progress(jp_fetch, "nope", {"state": "running"}), 404, "no job")
    _assert_error(await fetch(jp_fetch, "jobs", "nope", "cancel", method="POST"), 404, "no job")
    _assert_error(await fetch(jp_fetch, "jobs", "d1", "cancel", method="POST", body={"x": 1}),
                  400, "unexpected field")


async def test_hostile_names_come_back_as_plain_json_text(jp_fetch: Any) -> None:
    name = '<img src=x onerror="alert(1)">'
    await register(jp_fetch, "x1", name=name)
    raw = (await fetch(jp_fetch, "jobs", "x1")).body
    assert json.loads(raw)["name"] == name


async def test_job_names_are_cleaned_like_peer_names(jp_fetch: Any) -> None:
    """A bidi override or a control character could disguise one job as another in a list."""
    job = await register(jp_fetch, "c1", name="digits\u202e  MLP\u0000\n")
    assert job["name"] == "digits MLP"
    assert _json(await fetch(jp_fetch, "jobs", "c1"))["name"] == "digits MLP"
    for name in ("\u202e\u0000", " \t "):
        r = await fetch(jp_fetch, "jobs", method="POST", body=job_body("c2", name=name))
        _assert_error(r, 400, "name")
    assert [j["id"] for j in _json(await fetch(jp_fetch, "jobs"))] == ["c1"]


async def test_every_change_is_a_job_progress_event(jp_fetch: Any, jp_serverapp: Any) -> None:
    from parallalx_jupyter.server.events import schema_id

    seen: list[dict[str, Any]] = []

    async def listener(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        seen.append(dict(data))

    jp_serverapp.event_logger.add_listener(schema_id=schema_id("job-progress"), listener=listener)
    await register(jp_fetch, "e1")
    await progress(jp_fetch, "e1", {"state": "running", "progress": {"step": 5, "total": 9,
                                                                     "loss": 0.5}})
    await fetch(jp_fetch, "jobs", "e1", "cancel", method="POST")
    await progress(jp_fetch, "e1", {"state": "cancelled"})
    await fetch(jp_fetch, "jobs", "e1", method="DELETE")
    for _ in range(50):
        if len(seen) >= 5:
            break
        await asyncio.sleep(0.05)
    assert [e["state"] for e in seen] == ["pending", "running", "cancelling", "cancelled",
                                          "removed"]
    assert seen[1] == {"job_id": "e1", "workload": "train", "name": "digits MLP",
                       "state": "running", "step": 5, "total": 9, "loss": 0.5}


async def test_recovering_is_active_and_the_old_name_restarting_is_still_understood(
    jp_fetch: Any, parallalx_app: Any
) -> None:
    await register(jp_fetch, "rc1")
    message = "lost laptop: no heartbeat for 4 s and no rank made progress"
    r = await progress(jp_fetch, "rc1", {"state": "recovering", "progress": {"message": message}})
    assert r.code == 200
    job = _json(await fetch(jp_fetch, "jobs", "rc1"))
    assert job["state"] == "recovering" and job["progress"]["message"] == message
    # an owner of an earlier version says "restarting"; a row it stored says so too
    await register(jp_fetch, "rc2")
    assert (await progress(jp_fetch, "rc2", {"state": "restarting"})).code == 200
    assert _json(await fetch(jp_fetch, "jobs", "rc2"))["state"] == "recovering"
    parallalx_app.store.run_sync(
        lambda c: c.execute("UPDATE jobs SET state = 'restarting' WHERE id = 'rc2'")
    )
    assert _json(await fetch(jp_fetch, "jobs", "rc2"))["state"] == "recovering"
    job = _json(await fetch(jp_fetch, "jobs", "rc2", "cancel", method="POST"))
    assert job["state"] == "cancelling"


async def test_the_reporter_shows_which_device_a_recovering_job_lost(
    jp_fetch: Any, jp_serverapp: Any
) -> None:
    from parallalx_jupyter.client import ApiClient
    from parallalx_jupyter.jobs.client import device_names
    from parallalx_jupyter.jobs.handle import Job
    from parallalx_jupyter.jobs.reporter import JobReporter
    from parallalx_jupyter.text import jobs_table

    api = ApiClient(jp_serverapp.connection_url, jp_serverapp.identity_provider.token)
    me = _json(await fetch(jp_fetch, "device"))
    assert (await asyncio.to_thread(device_names, api))[me["id"]] == me["name"]
    job = Job("rec1", "train", "recovery test")
    reporter = await asyncio.to_thread(JobReporter(job, api, interval=0.05).start)

    async def listed(check: Any) -> dict[str, Any]:
        for _ in range(200):
            view = _json(await fetch(jp_fetch, "jobs", "rec1"))
            if check(view):
                return view
            await asyncio.sleep(0.05)
        raise AssertionError(view)

    job.hub.emit({"kind": "state", "state": "running"})
    job.hub.emit({"kind": "progress", "global_step": 10, "total_steps": 100,
                  "samples_per_s": 900.0, "eta_s": 360.0})
    await listed(lambda v: v["progress"]["eta_s"] == 360.0)
    lost = "lost laptop: no heartbeat for 4 s and no rank made progress; re-forming"
    job.hub.emit({"kind": "state", "state": "recovering", "message": lost,
                  "lost_devices": ["laptop"]})
    view = await listed(lambda v: v["state"] == "recovering")
    # the lost group's speed and ETA are gone, the lost device and the reason are shown
    assert view["progress"]["message"] == lost
    assert view["progress"]["eta_s"] is None and view["progress"]["samples_per_s"] is None
    assert job.state_message == lost
    assert "recovering: lost laptop: no heartbeat" in jobs_table([view])
    job.hub.emit({"kind": "state", "state": "running"})
    job.hub.emit({"kind": "progress", "global_step": 11, "total_steps": 100,
                  "samples_per_s": 450.0, "eta_s": 20.0})
    view = await listed(lambda v: v["state"] == "running" and v["progress"]["eta_s"] == 20.0)
    assert view["progress"]["message"] is None
    job.hub.emit({"kind": "state", "state": "finished"})
    await asyncio.to_thread(reporter.join, 10)


# ------------------------------------------------------------------ jobs the server starts


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"fn": ".foo:x"}, "cannot import '.foo:x'"),
        ({"fn": "../../etc:passwd"}, "cannot import '../../etc:passwd'"),
        ({"fn": 123}, "parameter 'fn' must be a 'package.module:attribute' string"),
        ({"fn": ["math:sqrt"]}, "parameter 'fn' must be a 'package.module:attribute' string"),
        ({"fn": None}, "parameter 'fn' must be a 'package.module:attribute' string"),
        ({"fn": {"a": 1}}, "parameter 'fn' must be a 'package.module:attribute' string"),
        ({"fn": "math:sqrt", "args": 4},
         "parameter 'args' must be a 'package.module:attribute' string or a JSON array"),
        ({"fn": "math:sqrt", "kwargs": [4]},
         "parameter 'kwargs' must be a 'package.module:attribute' string or a JSON object"),
    ],
)
async def test_run_refuses_python_parameters_it_cannot_import(jp_fetch: Any, params,
                                                               message) -> None:
    """Over JSON a Python object can only be named; anything else would start a job that fails
    on a worker."""
    r = await fetch(jp_fetch, "workloads", "launch", "run", method="POST", body={"params": params})
    _assert_error(r, 400, message)
    assert _json(await fetch(jp_fetch, "jobs")) == []


async def test_run_passes_names_that_look_like_options_as_values(
    jp_fetch: Any, jp_serverapp: Any, parallalx_app: Any
) -> None:
    """The job's process gets `--name=--help`: it runs (here: fails for want of a cluster)
    under that name instead of failing on its own command line."""
    # what the server's start does (pytest-jupyter does not start it): tells the spawner and
    # the job's process where this server listens
    await parallalx_app._start_jupyter_server_extension(jp_serverapp)

    async def ended(job_id: str) -> dict[str, Any]:
        for _ in range(300):
            job = _json(await fetch(jp_fetch, "jobs", job_id))
            if job["state"] == "failed":
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {job_id} did not fail: {job}")

    r = await fetch(jp_fetch, "workloads", "launch", "run", method="POST",
                    body={"params": {"fn": "math:sqrt"}, "name": "--help"})
    assert r.code == 202, r.body
    started = _json(r)
    assert started["name"] == "--help"
    job = await ended(started["id"])
    assert job["name"] == "--help"
    assert "no cluster has been started on this device" in job["error"], job["error"]
    # a scheduler "--help" cannot be reached (the process would try for a long while): its
    # command line shows the address went in as the option's value
    r = await fetch(jp_fetch, "workloads", "launch", "run", method="POST",
                    body={"params": {"fn": "math:sqrt"}, "scheduler": "--help"})
    assert r.code == 202, r.body
    proc = parallalx_app.spawner.children[_json(r)["id"]]
    with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    proc.kill()
    assert "--scheduler=--help" in argv, argv
    job = await ended(_json(r)["id"])
    assert "expected one argument" not in job["error"], job["error"]
