"""parallalx-jupyter: pool the computers you already have into one PyTorch training cluster."""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = [
    "CheckpointOptions",
    "CommunicationOptions",
    "DataOptions",
    "EvaluationOptions",
    "MetricsOptions",
    "OptimizationOptions",
    "PlacementOptions",
    "RecoveryOptions",
    "__version__",
    "checkpoint",
    "launch",
    "load_ipython_extension",
    "report",
    "restore",
    "run",
    "train",
    "unload_ipython_extension",
]

# what a function started by launch() calls on its ranks (parallalx_jupyter.training.launch_rank)
_LAUNCH_RANK = frozenset({"report", "checkpoint", "restore"})

# train()'s option groups (parallalx_jupyter.training.options)
_TRAIN_OPTIONS = frozenset({
    "CheckpointOptions", "CommunicationOptions", "DataOptions", "EvaluationOptions",
    "MetricsOptions", "OptimizationOptions", "PlacementOptions", "RecoveryOptions",
})


def __getattr__(name: str) -> Any:
    """Lazy exports: ``train`` and ``run`` (any workload) import torch and dask when first used,
    and so do ``train()``'s option groups (``CheckpointOptions``, ...: they import dask)."""
    if name in _TRAIN_OPTIONS:
        from .training import options

        return getattr(options, name)
    if name == "train":
        from .workloads.train import train

        return train
    if name == "run":
        from .workloads import run

        return run
    if name == "launch":
        from .workloads.launch import launch

        return launch
    if name in _LAUNCH_RANK:
        from .training import launch_rank

        return getattr(launch_rank, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import ParallalxApp

    return [{"module": "parallalx_jupyter", "app": ParallalxApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "parallalx-jupyter"}]


def load_ipython_extension(ipython: Any) -> None:
    """`%load_ext parallalx_jupyter`: registers `%parallalx` and `%%parallalx`."""
    from .notebook import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    from .notebook import unload_ipython_extension as unload

    unload(ipython)
