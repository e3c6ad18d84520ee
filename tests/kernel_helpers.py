"""Running code in a real kernel from a test (jupyter_client), shared by the tests that check
what a kernel finds."""

from __future__ import annotations

import queue
import time
from typing import Any


def run_in_kernel(kc: Any, code: str, timeout: float = 120.0) -> str:
    """Run `code`; its stdout (and any error's name and value), asserting it ran without one."""
    out: list[str] = []

    def hook(msg: dict) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            out.append("ERROR " + msg["content"]["ename"] + ": " + msg["content"]["evalue"])

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    assert reply["content"]["status"] == "ok", "".join(out)
    return "".join(out)


def wait_for_kernel(kc: Any, timeout: float = 90.0) -> None:
    """Like `wait_for_ready`, without its heartbeat check (which misfires on a loaded host)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kc.kernel_info()
        try:
            if kc.get_shell_msg(timeout=2)["msg_type"] == "kernel_info_reply":
                return
        except queue.Empty:
            pass
    raise TimeoutError("the kernel did not answer kernel_info")


def kernel_client(dev: Any, kernel_id: str) -> Any:
    """A started, answering client of kernel `kernel_id` of the device server `dev`."""
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(
        connection_file=str(dev.home / "jupyter-runtime" / f"kernel-{kernel_id}.json"))
    kc.load_connection_file()
    kc.start_channels()
    try:
        wait_for_kernel(kc)
    except BaseException:
        kc.stop_channels()
        raise
    return kc
