"""Workload tests run on the same real TLS Dask clusters as the training tests.

The fixtures live in tests/training/conftest.py; a conftest cannot be imported by name from a
sibling folder (both are called ``conftest``), so it is loaded here under its own module name
and its fixtures are re-exported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "training" / "conftest.py"
_spec = importlib.util.spec_from_file_location("parallalx_training_fixtures", _path)
assert _spec is not None and _spec.loader is not None
training_fixtures = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = training_fixtures
_spec.loader.exec_module(training_fixtures)

TLSCluster = training_fixtures.TLSCluster
tls_files = training_fixtures.tls_files
cluster2 = training_fixtures.cluster2
cluster3 = training_fixtures.cluster3

__all__ = ["TLSCluster", "cluster2", "cluster3", "tls_files"]
