"""Cluster lifecycle for parallalx: per-cluster CA, hardened scheduler, supervised workers.

Importing this package is cheap: ``distributed`` is imported only when a scheduler or worker
is actually started.
"""

from ._guard import EXIT_REFUSED, AdmissionPolicy, PeerIdentity
from .scheduler import SchedulerAdmission, SchedulerConfig, SchedulerProcess, start_scheduler
from .supervisor import ProcessSupervisor
from .tls import (
    ClusterCA,
    ClusterCredentials,
    CSRError,
    RevocationList,
    cert_fingerprint,
    cert_identity,
    make_csr,
    make_security,
    peer_identity,
    sign_csr,
    write_private,
)
from .worker import WorkerSpec, WorkerSupervisor

__all__ = [
    "EXIT_REFUSED",
    "AdmissionPolicy",
    "CSRError",
    "ClusterCA",
    "ClusterCredentials",
    "PeerIdentity",
    "ProcessSupervisor",
    "RevocationList",
    "SchedulerAdmission",
    "SchedulerConfig",
    "SchedulerProcess",
    "WorkerSpec",
    "WorkerSupervisor",
    "cert_fingerprint",
    "cert_identity",
    "make_csr",
    "make_security",
    "peer_identity",
    "sign_csr",
    "start_scheduler",
    "write_private",
]
