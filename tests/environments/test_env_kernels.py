"""Kernelspecs from a private JUPYTER_DATA_DIR, each interpreter probed by running it."""

from __future__ import annotations

import json
import os
import sys

import pytest
from env_helpers import write_kernelspec, write_script

from parallalx_jupyter.environments import KernelCatalog, UnknownKernelError, list_kernels

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX paths and shell scripts")


def by_name(kernels):
    return {k.name: k for k in kernels}


async def test_venv_kernel_is_selectable_and_r_kernel_is_listed_with_reason(
    jupyter_data, make_venv
):
    python = make_venv()
    launcher = [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    write_kernelspec(jupyter_data, "px-venv", launcher, display_name="Venv (px)")
    r_argv = ["/usr/bin/env", "R", "--slave", "-e", "IRkernel::main()", "--args", "{cf}"]
    write_kernelspec(jupyter_data, "px-r", r_argv, language="R")

    kernels = by_name(await list_kernels())

    venv = kernels["px-venv"]
    assert venv.selectable and venv.reason is None
    assert venv.display_name == "Venv (px)" and venv.language == "python"
    assert venv.interpreter == str(python)  # the venv's own path, symlink not followed
    assert venv.python_version == ".".join(map(str, sys.version_info[:3]))
    assert venv.to_dict()["id"] == "px-venv"
    json.dumps([k.to_dict() for k in kernels.values()])  # the REST shape is plain JSON

    r = kernels["px-r"]
    assert not r.selectable and r.python_version is None
    assert "not a Python kernel" in r.reason and "R" in r.reason


async def test_bare_python_argv_means_the_server_interpreter(jupyter_data):
    write_kernelspec(jupyter_data, "px-bare", ["python", "-m", "ipykernel_launcher", "-f", "{x}"])
    k = by_name(await list_kernels())["px-bare"]
    assert k.interpreter == sys.executable and k.selectable


async def test_unusable_python_kernels_say_why(jupyter_data, tmp_path):
    missing = tmp_path / "gone" / "bin" / "python"
    broken = write_script(tmp_path / "broken" / "python", "echo 'boom: libpython missing' >&2\n"
                                                          "exit 3\n")
    not_exec = tmp_path / "noexec" / "python"
    not_exec.parent.mkdir()
    not_exec.write_text("")
    # A stand-in for an old interpreter: it answers the probe the way Python 3.8 would.
    old = write_script(tmp_path / "py38" / "python", """\
        echo '@@parallalx-probe@@{"version": "3.8.10", "implementation": "CPython",'\\
        ' "executable": "x", "prefix": "x", "base_prefix": "x"}'
        """)
    hangs = write_script(tmp_path / "hang" / "python", "sleep 30\n")
    for name, exe in [("px-missing", missing), ("px-broken", broken), ("px-noexec", not_exec),
                      ("px-old", old), ("px-hangs", hangs)]:
        write_kernelspec(jupyter_data, name, [str(exe), "-m", "ipykernel_launcher"])
    write_kernelspec(jupyter_data, "px-nopath", ["px-no-such-python-anywhere", "-m", "x"])
    (jupyter_data / "px-badjson").mkdir()
    (jupyter_data / "px-badjson" / "kernel.json").write_text("{not json")

    kernels = by_name(await list_kernels(probe_timeout=1.0))

    assert not any(kernels[n].selectable for n in kernels if n.startswith("px-"))
    assert kernels["px-missing"].reason.startswith("interpreter missing")
    assert kernels["px-nopath"].reason == "interpreter missing: " \
        "'px-no-such-python-anywhere' not found on PATH"
    assert kernels["px-broken"].reason.startswith("interpreter not runnable")
    assert "boom: libpython missing" in kernels["px-broken"].reason
    assert "not executable" in kernels["px-noexec"].reason
    assert "did not answer within 1 s" in kernels["px-hangs"].reason
    assert kernels["px-old"].python_version == "3.8.10"
    assert kernels["px-old"].reason == "Python 3.8.10 is older than 3.10"
    assert "kernel.json unreadable" in kernels["px-badjson"].reason


async def test_catalog_caches_until_refresh(jupyter_data):
    argv = ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    write_kernelspec(jupyter_data, "px-one", argv)
    catalog = KernelCatalog(max_age=None)

    first = by_name(await catalog.kernels())
    assert "px-one" in first
    write_kernelspec(jupyter_data, "px-two", argv)
    assert "px-two" not in by_name(await catalog.kernels())  # cached
    assert "px-two" in by_name(await catalog.kernels(refresh=True))

    write_kernelspec(jupyter_data, "px-three", argv)
    assert (await catalog.get("px-three")).selectable  # an unknown name forces one refresh
    with pytest.raises(UnknownKernelError, match="no kernelspec named 'px-nope'"):
        await catalog.get("px-nope")
