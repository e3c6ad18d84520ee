"""Keep big freed CPU tensors in the rank process's heap instead of handing them back to the OS.

glibc serves every allocation above its mmap threshold (at most 32 MiB, however it adapts) with
a fresh ``mmap`` and unmaps it on free. A training step frees and re-allocates its gradients
(``zero_grad(set_to_none=True)``) and activations every step, so each step of a model with a
64 MiB weight matrix page-faults in ~17,000 zeroed pages: measured on this project's 2-core VM,
~45 ms of kernel time in a ~200 ms step, and the zeroing competes for memory bandwidth with the
other ranks on the machine. PyTorch's CPU tuning guide fixes this with jemalloc/tcmalloc via
``LD_PRELOAD``; a rank process is forked, not exec'd, so it sets glibc's own knobs instead: serve
everything below 1 GiB from the heap and keep up to 1 GiB of freed memory for the next step.
The rank process lives for one job, so the kept memory goes back to the OS when the job ends.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(limit_bytes: int = KEEP_BYTES) -> bool:
    """Set glibc's mmap and trim thresholds to ``limit_bytes``; False where not glibc/Linux."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    value = min(limit_bytes, 2**31 - 1)
    return bool(mallopt(_M_MMAP_THRESHOLD, value)) and bool(mallopt(_M_TRIM_THRESHOLD, value))
