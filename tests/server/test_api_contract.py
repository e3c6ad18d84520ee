"""One contract for every payload: the handlers' validators, the OpenAPI document and the lab
extension's TypeScript types must name the same fields, so none of the three can drift (the
server is also tested against the OpenAPI document itself: test_openapi.py)."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

from parallalx_jupyter.server import handlers, job_registry

API_TYPES = Path(__file__).parents[2] / "labextension" / "src" / "models" / "apiTypes.ts"


def _schemas() -> dict:
    doc = json.loads(resources.files("parallalx_jupyter").joinpath("openapi.json").read_text())
    return doc["components"]["schemas"]


def _ts_interfaces() -> dict[str, dict[str, bool]]:
    """``{interface: {field: required}}`` of the exported interfaces in apiTypes.ts."""
    out: dict[str, dict[str, bool]] = {}
    text = API_TYPES.read_text()
    for m in re.finditer(r"export interface (I\w+)(?: extends [\w, ]+)? \{(.*?)\n\}", text, re.S):
        fields = re.finditer(
            r"^\s*(?:readonly\s+)?['\"]?([A-Za-z_][\w-]*)['\"]?(\?)?\s*:", m.group(2), re.M
        )
        out[m.group(1)] = {f.group(1): f.group(2) is None for f in fields}
    return out


BODIES = [
    (handlers.ACCEPT_SPEC, "AcceptBody"),
    (handlers.REJECT_SPEC, "RejectBody"),
    (handlers.INVITATION_SPEC, "InvitationBody"),
    (handlers.ADD_SELF_SPEC, "AddSelfBody"),
    (handlers.ENVIRONMENT_SPEC, "EnvironmentBody"),
    (handlers.RUN_SPEC, "WorkloadRunBody"),
    (job_registry.REGISTER_SPEC, "JobRegisterBody"),
    (job_registry.UPDATE_SPEC, "JobUpdateBody"),
    (job_registry.PROGRESS_SPEC, "JobProgress"),
]


@pytest.mark.parametrize(("spec", "schema"), BODIES, ids=[s for _, s in BODIES])
def test_each_validator_is_the_documented_body(spec, schema):
    documented = _schemas()[schema]
    assert set(spec) == set(documented.get("properties", {})), schema
    required = {name for name, (_check, needed, _help) in spec.items() if needed}
    assert required == set(documented.get("required", [])), schema


#: TypeScript interfaces whose schema is not ``<name without the I>``.
TS_NAMES = {"IKernelChoice": "Kernel"}
#: Interfaces for nested parts the document describes inline.
TS_INLINE = {"ICudaDevice", "IWorkloadParameter", "IWorkloadParameters"}


def test_the_lab_extension_reads_only_documented_fields():
    schemas = _schemas()
    interfaces = _ts_interfaces()
    assert len(interfaces) >= 20  # the parser still finds them
    for name, fields in interfaces.items():
        if name in TS_INLINE:
            continue
        schema = schemas.get(TS_NAMES.get(name, name[1:]))
        assert schema is not None, f"{name} has no schema in openapi.json"
        unknown = set(fields) - set(schema.get("properties", {}))
        assert not unknown, f"{name} reads fields the API does not document: {unknown}"
