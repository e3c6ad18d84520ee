"""The capability profile: psutil facts in-process, torch facts from a real subprocess probe.
(The device endpoint's refresh: tests/server/test_profile_api.py.)"""

from __future__ import annotations

import time

import psutil
import torch

from parallalx_jupyter.profile import ProfileCache, host_profile


def test_host_profile_is_cheap_and_true():
    t0 = time.perf_counter()
    prof = host_profile()
    assert time.perf_counter() - t0 < 0.05
    assert prof["cpu_threads"] == psutil.cpu_count()
    assert prof["memory_bytes"] == psutil.virtual_memory().total


async def test_accelerator_probe_matches_torch_and_is_cached():
    cache = ProfileCache()
    assert cache.peek()["accelerators"] is None
    first = await cache.get()
    acc = first["accelerators"]
    assert acc["torch"] == torch.__version__
    assert len(acc["cuda"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    t0 = time.perf_counter()
    again = await cache.get()
    assert time.perf_counter() - t0 < 0.05 and again["probed_at"] == first["probed_at"]
    refreshed = await cache.get(refresh=True)
    assert refreshed["probed_at"] > first["probed_at"]

