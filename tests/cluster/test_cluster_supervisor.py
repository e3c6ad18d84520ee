"""ProcessSupervisor: backoff, permanent exit codes, process groups, memory watchdog."""

from __future__ import annotations

import sys
import textwrap
import time

import pytest
from cluster_helpers import pid_alive, wait_until

from parallalx_jupyter.cluster import ProcessSupervisor

pytestmark = pytest.mark.timeout(60)


def _script(tmp_path, body: str) -> list[str]:
    path = tmp_path / "child.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


async def test_backoff_then_permanent_exit_code_stops(tmp_path):
    argv = _script(
        tmp_path,
        f"""
        import pathlib, sys
        p = pathlib.Path({str(tmp_path / "count")!r})
        n = int(p.read_text()) if p.exists() else 0
        p.write_text(str(n + 1))
        sys.exit(77 if n >= 2 else 1)
        """,
    )
    events = []
    sup = ProcessSupervisor(
        argv,
        backoff_initial=0.1,
        backoff_factor=2,
        permanent_exit_codes=(77,),
        on_event=events.append,
    )
    t0 = time.monotonic()
    await sup.start()
    assert await sup.wait_for(["refused", "failed"], 20) == "refused"
    assert sup.restarts == 2 and sup.last_exit_code == 77
    delays = [e["delay"] for e in events if e["state"] == "backoff"]
    assert delays == [0.1, 0.2] and time.monotonic() - t0 >= 0.3
    await sup.stop()
    assert sup.state == "refused"


async def test_stop_terminates_the_whole_process_group(tmp_path):
    argv = _script(
        tmp_path,
        f"""
        import pathlib, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        pathlib.Path({str(tmp_path / "grandchild")!r}).write_text(str(child.pid))
        time.sleep(60)
        """,
    )
    sup = ProcessSupervisor(argv, stop_timeout=3)
    await sup.start()
    pid = sup.pid
    gc_file = tmp_path / "grandchild"
    await wait_until(lambda: gc_file.exists() and gc_file.read_text(), 10)
    grandchild = int(gc_file.read_text())
    assert pid_alive(pid) and pid_alive(grandchild)
    await sup.stop()
    assert sup.state == "stopped"
    await wait_until(lambda: not pid_alive(pid) and not pid_alive(grandchild), 5)


async def test_memory_watchdog_kills_a_process_over_its_limit(tmp_path):
    argv = _script(
        tmp_path,
        """
        import time
        block = bytearray(300 * 2**20)
        for i in range(0, len(block), 4096):
            block[i] = 1
        time.sleep(60)
        """,
    )
    sup = ProcessSupervisor(
        argv, memory_limit=100 * 2**20, memory_check_interval=0.1, max_restarts=0
    )
    await sup.start()
    assert await sup.wait_for(["failed"], 20) == "failed"
    assert sup.last_exit_code == -9
