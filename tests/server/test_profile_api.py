"""The device endpoint's capability profile, with the real torch probe, in the in-process server
(moved from tests/test_profile.py, where it started a device process)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def _no_torch_probe() -> None:
    """This module is about the real probe: the server runs it (this overrides the autouse
    fixture of tests/server/conftest.py that replaces it)."""


async def _device(jp_fetch: Any, query: str = "") -> dict[str, Any]:
    r = await jp_fetch("parallalx", "api", "device", params={"refresh": query} if query else {})
    return json.loads(r.body)


async def test_device_endpoint_refreshes_the_profile_on_demand(jp_fetch: Any) -> None:
    info = await _device(jp_fetch, "true")
    assert info["profile"]["accelerators"]["torch"] == torch.__version__
    assert (await _device(jp_fetch))["profile"]["probed_at"] == info["profile"]["probed_at"]
