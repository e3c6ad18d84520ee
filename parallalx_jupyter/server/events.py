"""Event schemas registered with jupyter_server's event logger.

Any authenticated client can read every event (the lab panel through
`serviceManager.events.stream`, kernels through the client module), so payloads carry IDs, names
and states only: never keys, nonces, tokens or verification codes. Surfaces fetch details from
the REST API when an event tells them something changed.
"""

from __future__ import annotations

from typing import Any

from ..client import SCHEMA_BASE

_PEER = {
    "peer_id": {"type": "string", "description": "The other device's ID."},
    "peer_name": {"type": "string", "description": "The other device's name (untrusted text)."},
}


def _schema(name: str, title: str, properties: dict[str, Any], required: list[str]) -> dict:
    return {
        "$id": f"{SCHEMA_BASE}/{name}/v1",
        "version": "1",
        "title": title,
        "personal-data": True,
        "description": title,
        "type": "object",
        "required": required,
        "properties": properties,
    }


REQUEST_RECEIVED = _schema(
    "request-received",
    "A connection request from another device is waiting for a decision",
    {
        "request_id": {"type": "string"},
        "kind": {"enum": ["invite", "offer"]},
        **_PEER,
        "expires_at": {"type": "number"},
    },
    ["request_id", "kind", "peer_id", "peer_name", "expires_at"],
)

REQUEST_DECIDED = _schema(
    "request-decided",
    "A connection request was accepted, rejected, expired or superseded",
    {
        "request_id": {"type": "string"},
        "direction": {"enum": ["incoming", "outgoing"]},
        "kind": {"enum": ["invite", "offer"]},
        **_PEER,
        "state": {"enum": ["accepted", "rejected", "expired", "superseded"]},
    },
    ["request_id", "direction", "state", "peer_id"],
)

DEVICE_ADDED = _schema(
    "device-added",
    "A device was paired with this one",
    {**_PEER, "role": {"enum": ["worker", "main"]}},
    ["peer_id", "peer_name", "role"],
)

DEVICE_REVOKED = _schema(
    "device-revoked",
    "A pairing was revoked by this device or by the peer",
    {**_PEER, "by": {"enum": ["self", "peer"]}},
    ["peer_id", "by"],
)

CLUSTER_STATE = _schema(
    "cluster-state",
    "This main device's scheduler started or stopped",
    {"state": {"enum": ["started", "stopped"]}},
    ["state"],
)

WORKER_STATE = _schema(
    "worker-state",
    "Progress of this device's worker for a main device (joining, running, failed, stopped)",
    {**_PEER, "state": {"type": "string"}, "message": {"type": "string"}},
    ["peer_id", "state"],
)

INSTALL_PROGRESS = _schema(
    "install-progress",
    "Installing a package into the environment a worker will run in",
    {**_PEER, "package": {"type": "string"}, "phase": {"type": "string"},
     "message": {"type": "string"}},
    ["package", "phase"],
)

_NUMBER = {"type": "number"}

JOB_PROGRESS = _schema(
    "job-progress",
    "A job (training, sweep, inference, ...) was registered, progressed, changed state or was "
    "removed from the list",
    {
        "job_id": {"type": "string"},
        "workload": {"type": "string"},
        "name": {"type": "string", "description": "The job's name (user text)."},
        "state": {"enum": ["pending", "running", "recovering", "cancelling", "finished",
                           "failed", "cancelled", "lost", "removed"]},
        "step": {"type": "integer"},
        "total": {"type": "integer"},
        "loss": _NUMBER,
        "samples_per_s": _NUMBER,
        "eta_s": _NUMBER,
    },
    ["job_id", "workload", "state"],
)

SCHEMAS: dict[str, dict] = {
    "request-received": REQUEST_RECEIVED,
    "request-decided": REQUEST_DECIDED,
    "device-added": DEVICE_ADDED,
    "device-revoked": DEVICE_REVOKED,
    "cluster-state": CLUSTER_STATE,
    "worker-state": WORKER_STATE,
    "install-progress": INSTALL_PROGRESS,
    "job-progress": JOB_PROGRESS,
}


def schema_id(name: str) -> str:
    return SCHEMAS[name]["$id"]
