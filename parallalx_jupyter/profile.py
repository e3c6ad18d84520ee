"""What this device can contribute: cores, memory, OS, and accelerators.

psutil facts are cheap and read in-process. The accelerator facts need torch, whose import costs
seconds and whose CUDA initialisation would pin GPU memory inside the Jupyter server for its whole
life, so they come from a short-lived subprocess, run off the IOLoop and cached until someone
asks for a refresh.
"""

from __future__ import annotations

import asyncio
import json
import platform
import socket
import sys
import time
from typing import Any

import psutil

_TORCH_PROBE = r"""
import json
out = {"torch": None, "cuda": [], "mps": False}
try:
    import torch
    out["torch"] = torch.__version__
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            out["cuda"].append({"index": i, "name": p.name,
                                "memory_bytes": int(p.total_memory)})
    mps = getattr(torch.backends, "mps", None)
    out["mps"] = bool(mps is not None and mps.is_available())
except Exception as err:  # a broken torch is a fact about the device, not a crash
    out["error"] = f"{type(err).__name__}: {err}"
print(json.dumps(out))
"""


def host_profile() -> dict[str, Any]:
    """The psutil part of the profile; microseconds to compute."""
    mem = psutil.virtual_memory()
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_cores": psutil.cpu_count(logical=False) or psutil.cpu_count() or 1,
        "cpu_threads": psutil.cpu_count() or 1,
        "memory_bytes": int(mem.total),
        "memory_available_bytes": int(mem.available),
    }


async def accelerator_profile(
    python: str = sys.executable, timeout: float = 60.0
) -> dict[str, Any]:
    """torch version and CUDA/MPS devices as seen by `python`, probed in a subprocess."""
    proc = await asyncio.create_subprocess_exec(
        python, "-c", _TORCH_PROBE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        return {"torch": None, "cuda": [], "mps": False, "error": "probe timed out"}
    except asyncio.CancelledError:  # server stopping: leave no probe behind
        proc.kill()
        await proc.wait()
        raise
    try:
        return json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"torch": None, "cuda": [], "mps": False, "error": "probe failed"}


class ProfileCache:
    """Holds the last full profile; the accelerator probe runs once unless refreshed."""

    def __init__(self) -> None:
        self._accelerators: dict[str, Any] | None = None
        self._probed_at: float | None = None
        self._lock = asyncio.Lock()

    async def get(self, refresh: bool = False) -> dict[str, Any]:
        async with self._lock:
            if refresh or self._accelerators is None:
                self._accelerators = await accelerator_profile()
                self._probed_at = time.time()
        return {**host_profile(), "accelerators": self._accelerators, "probed_at": self._probed_at}

    def peek(self) -> dict[str, Any]:
        """The profile without waiting for a probe (accelerators null until the first one)."""
        return {**host_profile(), "accelerators": self._accelerators, "probed_at": self._probed_at}
