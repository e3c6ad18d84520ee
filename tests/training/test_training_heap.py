"""The rank process's heap setting: big tensors freed every step must not page-fault again."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from parallalx_jupyter.training.heap import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def step():
    t = torch.empty(16 * 1024 * 1024)  # 64 MiB, like a 4096x4096 gradient
    t.fill_(1.0)                        # touch every page
    del t
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_step(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_big_tensors_are_reused_without_page_faults() -> None:
    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert default > 10_000  # glibc maps and unmaps 64 MiB blocks: every page faults again
    assert kept < 100


def test_the_setting_reports_whether_it_applied() -> None:
    code = "from parallalx_jupyter.training.heap import keep_freed_memory as k; print(k())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == str(sys.platform.startswith("linux"))
