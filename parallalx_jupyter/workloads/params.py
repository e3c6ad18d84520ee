"""Workload parameters typed as text (the CLI, magics): ``key=value`` words and JSON.

A value is read as JSON when it parses (``epochs=3``, ``space='{"lr": {...}}'``,
``workers='["tls://..."]'``), otherwise kept as a string (``objective=mypkg.tune:objective``,
which the workload imports for ``x-python`` parameters). ``--params-json`` takes one JSON
object; ``key=value`` words override its entries.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .base import WorkloadError


def parse_params(words: Sequence[str], params_json: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if params_json:
        try:
            loaded = json.loads(params_json)
        except ValueError as err:
            raise WorkloadError(f"--params-json is not valid JSON: {err}") from None
        if not isinstance(loaded, dict):
            raise WorkloadError("--params-json must be a JSON object")
        out.update(loaded)
    for word in words:
        key, sep, text = word.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise WorkloadError(f"expected key=value, got {word!r}")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out
