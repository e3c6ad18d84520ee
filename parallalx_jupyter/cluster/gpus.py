"""Which GPUs a device shares, and one worker per GPU.

A rank uses its worker's first visible GPU, so a device sharing several GPUs runs one Dask
worker per GPU (as ``dask-cuda``'s ``LocalCUDACluster`` does), each seeing only its own
(``CUDA_VISIBLE_DEVICES``) and named ``<device_id>/gpu<N>``: ``train()`` and ``px.launch`` then
put one rank on each GPU, and NCCL's ranks on one host find each other by the local ranks.
The GPUs are read with ``nvidia-smi -L`` (no torch import, no CUDA context in the server),
within the server's own ``CUDA_VISIBLE_DEVICES`` if it has one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

_GPU_LINE = re.compile(r"^GPU (\d+):", re.MULTILINE)


def visible_gpus() -> list[str] | None:
    """``CUDA_VISIBLE_DEVICES`` entries for this device's NVIDIA GPUs; None when that cannot
    be known here (no ``nvidia-smi``, or it failed)."""
    own = os.environ.get("CUDA_VISIBLE_DEVICES")
    if own is not None:
        return [entry.strip() for entry in own.split(",") if entry.strip()]
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return _GPU_LINE.findall(out)


def gpu_layout(asked: int | None, visible: list[str] | None) -> list[str] | None:
    """The GPUs the device's workers get, one worker each; None: one worker, GPUs as the
    process finds them (nothing known, or none visible).

    ``asked`` is what the accepted invitation asked for (None: not limited, so every visible
    GPU; 0: none, so the worker sees no GPU at all, which is what its user agreed to).
    """
    if asked == 0:
        return []
    if not visible:
        return None
    return list(visible if asked is None else visible[: max(0, asked)])
