"""parallalx-jupyter: pool the computers you already have into one PyTorch training cluster."""

from __future__ import annotations

from typing import Any

from ._version import __version__

__all__ = ["__version__"]


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import ParallalxApp

    return [{"module": "parallalx_jupyter", "app": ParallalxApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "parallalx-jupyter"}]
