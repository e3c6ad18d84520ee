"""Checking a job's parameters against its JSON Schema without importing ``jsonschema`` first.

``import jsonschema`` costs ~1.5 s wherever the Jupyter stack is installed: its format module
imports ``rfc3987_syntax``, which compiles 38 lark grammars at import time. That landed on the
first job of every kernel (``px.launch`` -> first step in benchmark (d)). The built-in
workloads' schemas use only the keywords in :data:`KEYWORDS`, which are checked here with
``jsonschema``'s own wording; a schema with any other keyword (a plugin's) goes to
``jsonschema`` itself, unchanged. ``tests/workloads/test_workload_schema_check.py`` holds the
two to the same verdicts on every built-in schema.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

#: What :func:`first_error` checks itself; annotations (``description``, ``default``, ``title``,
#: ``examples``, ``x-*``) change no verdict.
KEYWORDS = frozenset({
    "type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
    "minLength", "maxLength", "items", "minItems", "maxItems", "properties", "required",
    "additionalProperties", "minProperties", "maxProperties",
})
_ANNOTATIONS = frozenset({"description", "default", "title", "examples", "$comment"})

_TYPES: dict[str, Any] = {  # jsonschema's Draft 2020-12 type checker
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
    "null": lambda v: v is None,
}

# One violation: (path, message, whether the value matches its schema's "type").
_Error = tuple[tuple[Any, ...], str, bool]


def simple_enough(schema: Any) -> bool:
    """True when every keyword of ``schema`` (at every depth) is one this module checks."""
    if isinstance(schema, bool):
        return True
    if not isinstance(schema, Mapping):
        return False
    for key, value in schema.items():
        if key in _ANNOTATIONS or key.startswith("x-"):
            continue
        if key not in KEYWORDS:
            return False
        if key == "type" and not all(t in _TYPES for t in _as_list(value)):
            return False
        if key == "properties" and not all(simple_enough(s) for s in value.values()):
            return False
        if key in ("items", "additionalProperties") and not simple_enough(value):
            return False
    return True


def first_error(schema: Mapping[str, Any], instance: Any) -> tuple[str, str] | None:
    """(path, message) of the violation ``jsonschema.exceptions.best_match`` would pick, or
    None. Schemas that are not :func:`simple_enough` are checked by ``jsonschema`` itself."""
    if not simple_enough(schema):
        import jsonschema

        error = jsonschema.exceptions.best_match(
            jsonschema.Draft202012Validator(schema).iter_errors(instance)
        )
        if error is None:
            return None
        return ".".join(str(p) for p in error.absolute_path), error.message
    best: _Error | None = None
    for error in _errors(schema, instance, ()):
        # best_match's relevance: the shallowest, then the later sibling, then a type error;
        # the first of equals (max() keeps it)
        if best is None or _relevance(error) > _relevance(best):
            best = error
    return None if best is None else (".".join(str(p) for p in best[0]), best[1])


def _relevance(error: _Error) -> tuple[Any, ...]:
    return (-len(error[0]), error[0], not error[2])


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _equal(a: Any, b: Any) -> bool:
    """jsonschema's equality: ``True`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _errors(schema: Any, value: Any, path: tuple[Any, ...]) -> Iterator[_Error]:
    """Every violation, in jsonschema's order: the schema's keywords as written."""
    if schema is True:
        return
    if schema is False:
        yield path, f"False schema does not allow {value!r}", False
        return
    types = _as_list(schema["type"]) if "type" in schema else None
    fits = types is not None and any(_TYPES[t](value) for t in types)
    for key, arg in schema.items():
        for message in _keyword(key, arg, schema, value):
            yield path, message, fits
        yield from _descend(key, arg, schema, value, path)


def _keyword(key: str, arg: Any, schema: Mapping[str, Any], value: Any) -> Iterator[str]:
    """The messages of one keyword about the value itself."""
    number, string = _TYPES["number"](value), isinstance(value, str)
    array, obj = isinstance(value, list), isinstance(value, dict)
    if key == "type" and not any(_TYPES[t](value) for t in _as_list(arg)):
        yield f"{value!r} is not of type {', '.join(repr(t) for t in _as_list(arg))}"
    elif key == "enum" and not any(_equal(each, value) for each in arg):
        yield f"{value!r} is not one of {arg!r}"
    elif key == "minimum" and number and value < arg:
        yield f"{value!r} is less than the minimum of {arg!r}"
    elif key == "maximum" and number and value > arg:
        yield f"{value!r} is greater than the maximum of {arg!r}"
    elif key == "exclusiveMinimum" and number and value <= arg:
        yield f"{value!r} is less than or equal to the minimum of {arg!r}"
    elif key == "exclusiveMaximum" and number and value >= arg:
        yield f"{value!r} is greater than or equal to the maximum of {arg!r}"
    elif key == "minLength" and string and len(value) < arg:
        yield f"{value!r} {'should be non-empty' if arg == 1 else 'is too short'}"
    elif key == "maxLength" and string and len(value) > arg:
        yield f"{value!r} {'is expected to be empty' if arg == 0 else 'is too long'}"
    elif key == "minItems" and array and len(value) < arg:
        yield f"{value!r} {'should be non-empty' if arg == 1 else 'is too short'}"
    elif key == "maxItems" and array and len(value) > arg:
        yield f"{value!r} {'is expected to be empty' if arg == 0 else 'is too long'}"
    elif key == "required" and obj:
        for name in arg:
            if name not in value:
                yield f"{name!r} is a required property"
    elif key == "minProperties" and obj and len(value) < arg:
        yield (f"{value!r} "
               f"{'should be non-empty' if arg == 1 else 'does not have enough properties'}")
    elif key == "maxProperties" and obj and len(value) > arg:
        yield f"{value!r} {'is expected to be empty' if arg == 0 else 'has too many properties'}"
    elif key == "additionalProperties" and arg is False and obj:
        extras = sorted((k for k in value if k not in schema.get("properties", {})), key=str)
        if extras:
            verb = "was" if len(extras) == 1 else "were"
            yield (f"Additional properties are not allowed "
                   f"({', '.join(repr(n) for n in extras)} {verb} unexpected)")


def _descend(key: str, arg: Any, schema: Mapping[str, Any], value: Any,
             path: tuple[Any, ...]) -> Iterator[_Error]:
    """The violations of one keyword's subschemas, deeper in the value."""
    if key == "items" and isinstance(value, list):
        for i, item in enumerate(value):
            yield from _errors(arg, item, (*path, i))
    elif key == "properties" and isinstance(value, dict):
        for name, sub in arg.items():
            if name in value:
                yield from _errors(sub, value[name], (*path, name))
    elif key == "additionalProperties" and isinstance(arg, dict) and isinstance(value, dict):
        for name in value:
            if name not in schema.get("properties", {}):
                yield from _errors(arg, value[name], (*path, name))
