"""The requirement set, inspection of another interpreter by running it, and the diff."""

from __future__ import annotations

import importlib.metadata as md
import os
import sys
import sysconfig

import pytest
from env_helpers import TOY

from parallalx_jupyter.environments import (
    CLUSTER_PACKAGES,
    RequirementError,
    cluster_pins,
    diff,
    inspect,
    inspect_environment,
    requirement_set,
)

MAIN = {"torch": "2.13.0+cpu", "dask": "2026.8.0", "distributed": "2026.8.0",
        "cloudpickle": "3.1.3", "msgpack": "1.2.4", "tornado": "6.6.1"}


def test_cluster_pins_are_exact_public_versions():
    pins = [str(r) for r in cluster_pins(MAIN)]
    assert pins == ["torch==2.13.0", "dask==2026.8.0", "distributed==2026.8.0",
                    "cloudpickle==3.1.3", "msgpack==1.2.4", "tornado==6.6.1"]
    # a package the main device lacks is not required; names outside the list are ignored
    assert [r.name for r in cluster_pins({"dask": "2026.8.0", "evil": "1"})] == ["dask"]
    with pytest.raises(RequirementError, match="invalid torch version"):
        cluster_pins({"torch": "not a version"})
    # default: this process's versions (the main device builds its pins this way)
    mine = {str(r) for r in cluster_pins()}
    assert f"dask=={md.version('dask')}" in mine


def test_torch_local_labels_compare_by_public_version():
    pins = cluster_pins({"torch": "2.13.0+cpu"})
    assert diff(pins, {"torch": "2.13.0+cu121"})[0]["action"] == "ok"
    assert diff(pins, {"torch": "2.13.0"})[0]["action"] == "ok"
    assert diff(pins, {"torch": "2.12.1+cpu"})[0]["action"] == "upgrade"
    assert diff(pins, {"torch": "2.14.0+cpu"})[0]["action"] == "mismatch"


def test_job_requirements_are_validated_and_merged():
    reqs = requirement_set(["numpy>=1.20", "torch>=2.0", "# comment", "", "Px_Toy[x]==2.0"],
                           main_versions=MAIN)
    by_name = {r.name.lower().replace("_", "-"): str(r) for r in reqs}
    assert by_name["torch"] == "torch==2.13.0,>=2.0"
    assert by_name["numpy"] == "numpy>=1.20" and by_name["px-toy"] == "Px_Toy[x]==2.0"
    with pytest.raises(RequirementError, match="invalid requirement 'numpy>=>1'"):
        requirement_set(["numpy>=>1"], main_versions=MAIN)
    with pytest.raises(RequirementError, match="conflicts with the main device's torch==2.13.0"):
        requirement_set(["torch<2"], main_versions=MAIN)
    with pytest.raises(RequirementError, match="direct references"):
        requirement_set(["pkg @ https://example.invalid/pkg.whl"], main_versions=MAIN)
    with pytest.raises(RequirementError, match="invalid requirement"):
        requirement_set(["--index-url=https://example.invalid"], main_versions=MAIN)
    # two exact pins no version meets: named here, not merged into '==1.0,==2.0' for pip
    with pytest.raises(RequirementError, match="'numpy==1.0' and 'numpy==2.0' cannot both hold"):
        requirement_set(["numpy==1.0", "numpy==2.0"], main_versions=MAIN)
    merged = {r.name: str(r) for r in requirement_set(["numpy==1.0", "numpy>=0.5"],
                                                      main_versions=MAIN)}
    assert merged["numpy"] == "numpy==1.0,>=0.5"


def test_diff_actions():
    required = ["a==2.0", "b>=1,<2", "c~=2.0", "d==2.0.*", "e", "f==1.0", "g>=3"]
    installed = {"a": "1.5", "b": "2.5", "c": "3.1", "d": "1.9", "E": "0.1", "g": "3.0"}
    rows = diff(required, installed)
    assert [(r["name"], r["installed"], r["action"]) for r in rows] == [
        ("a", "1.5", "upgrade"), ("b", "2.5", "mismatch"), ("c", "3.1", "mismatch"),
        ("d", "1.9", "upgrade"), ("e", "0.1", "ok"), ("f", None, "install"), ("g", "3.0", "ok"),
    ]
    assert rows[0] == {"id": "a", "name": "a", "required": "==2.0", "installed": "1.5",
                       "action": "upgrade", "requirement": "a==2.0"}
    # markers are evaluated for the target interpreter when its markers are known
    assert diff(['x==1; sys_platform == "nope"'], {}, markers={"sys_platform": "linux"}) == []


def _inherited_version(name: str) -> str | None:
    """`name`'s version in the base interpreter's own site-packages: what a venv made with
    `--system-site-packages` sees. Not `md.version(name)` of this process, which may run in an
    environment of its own (a venv, with other versions) or have more on its sys.path."""
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    paths = list(dict.fromkeys(sysconfig.get_path(k, vars=base) for k in ("purelib", "platlib")))
    dist = next(iter(md.distributions(name=name, path=paths)), None)
    return dist.version if dist is not None else None


@pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout")
async def test_inspect_runs_the_selected_interpreter(make_venv):
    isolated = make_venv("isolated", system_site=False)  # sees none of the server's packages
    assert await inspect(str(isolated)) == {n: None for n in CLUSTER_PACKAGES}

    shared = make_venv("shared")
    env = await inspect_environment(str(shared), [*CLUSTER_PACKAGES, "packaging", TOY, "Dask"])
    inherited = {n: _inherited_version(n) for n in ("packaging", "dask")}
    assert None not in inherited.values(), inherited
    assert env.packages["packaging"] == inherited["packaging"]
    assert env.packages["dask"] == inherited["dask"] and env.packages[TOY] is None
    assert env.markers["python_version"] == env.python_version.rsplit(".", 1)[0]
    rows = diff(requirement_set([f"{TOY}==1.0"]), env.packages, markers=env.markers)
    assert [r["name"] for r in rows if r["action"] != "ok"] == [TOY]
