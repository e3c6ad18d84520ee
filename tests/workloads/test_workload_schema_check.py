"""The parameter check gives jsonschema's verdicts and messages on every built-in schema."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points
from typing import Any

import jsonschema
import pytest

from parallalx_jupyter.workloads.schema_check import first_error, simple_enough

PROBES: list[Any] = [None, True, False, -1, 0, 0.5, 1, 2.0, 10**9, "", "x", "a" * 400, [], ["a"],
                     [1], ["a"] * 200, {}, {"a": 1}, {"": None}]


def _checked_schemas() -> dict[str, dict[str, Any]]:
    """Each built-in workload's schema as ``validate_params`` checks it (its Python-object
    parameters are taken out first)."""
    out = {}
    for ep in entry_points(group="parallalx_jupyter.workloads"):
        schema = ep.load().parameters
        props = {k: v for k, v in schema["properties"].items() if not v.get("x-python")}
        out[ep.name] = {**schema, "properties": props,
                        "required": [r for r in schema.get("required", []) if r in props]}
    return out


def _jsonschema(schema: dict[str, Any], instance: Any) -> tuple[str, str] | None:
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(instance))
    if error is None:
        return None
    return ".".join(str(p) for p in error.absolute_path), error.message


@pytest.mark.parametrize("name", sorted(_checked_schemas()))
def test_same_verdict_and_message_as_jsonschema(name: str) -> None:
    schema = _checked_schemas()[name]
    assert simple_enough(schema), "a built-in schema would import jsonschema on every job"
    cases: list[Any] = [{}, {"no_such_parameter": 1}, {"a": 1, "b": 2}, [], "x"]
    for prop in schema["properties"]:
        cases += [{prop: v} for v in PROBES]
        cases += [{prop: [v]} for v in PROBES] + [{prop: {"k": v}} for v in PROBES]
    compared = 0
    for instance in cases:
        ours, theirs = first_error(schema, instance), _jsonschema(schema, instance)
        assert (ours is None) == (theirs is None), (instance, ours, theirs)
        if theirs is not None:
            assert ours == theirs, instance
            compared += 1
    assert compared > len(schema["properties"])  # the probes did find errors to compare


def test_other_keywords_go_to_jsonschema() -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "pattern": "^a"}}}
    assert not simple_enough(schema)
    assert first_error(schema, {"name": "b"}) == ("name", "'b' does not match '^a'")
    assert first_error(schema, {"name": "ab"}) is None


def test_a_job_s_parameter_check_does_not_import_jsonschema() -> None:
    code = ("import sys\nfrom parallalx_jupyter.workloads.base import validate_params\n"
            "from parallalx_jupyter.workloads.launch import LaunchWorkload\n"
            "validate_params('launch', LaunchWorkload.parameters,\n"
            "                {'fn': print, 'max_restarts': 1})\n"
            "print('jsonschema' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"
