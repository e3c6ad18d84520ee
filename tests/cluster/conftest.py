"""Fixtures for the cluster tests: real scheduler and worker processes over TLS."""

from __future__ import annotations

import pytest
from cluster_helpers import Harness


@pytest.fixture
async def harness(tmp_path):
    h = Harness(tmp_path)
    try:
        yield h
    finally:
        await h.close()
