#!/usr/bin/env bash
# Install parallalx-jupyter (editable) with its test dependencies, saying what it does as it
# goes (pip shows its own progress: this takes a few minutes on a fresh machine).
#
# Where: the active virtual environment; outside one, a virtual environment .venv in the
# checkout (made here if missing; Debian/Ubuntu need `apt install python3-venv` for it), except
# for root in a Python that pip may install into (CI and containers: that environment itself).
# Works where only `python3` exists. PYTHON=/path/to/python picks the interpreter;
# `--dry-run` only says where it would install (tests/test_setup_script.py).
# torch is pinned first so pip takes the machine's CPU wheel instead of downloading a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n==> %s\n' "$*"; }
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; fi

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  py=$(command -v python3 || command -v python || true)
fi
if [[ -z "$py" ]]; then
  echo "setup: no python3 found; install Python 3.10 or newer (Debian/Ubuntu: apt install python3 python3-venv)" >&2
  exit 1
fi

# in a virtual environment already? may pip install into this Python (PEP 668)?
where=$("$py" -c 'import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
print(int(sys.prefix != sys.base_prefix), int(managed))')
read -r in_venv managed <<<"$where"

made_venv=0
if [[ "$in_venv" == 0 ]] && { [[ "$(id -u)" != 0 ]] || [[ "$managed" == 1 ]]; }; then
  if [[ "$dry_run" == 1 ]]; then
    say "would install into the virtual environment .venv"
    exit 0
  fi
  if [[ ! -x .venv/bin/python ]]; then
    say "creating a virtual environment in .venv ($("$py" --version 2>&1))"
    "$py" -m venv .venv || {
      echo "setup: could not create .venv; on Debian/Ubuntu: sudo apt install python3-venv" >&2
      exit 1
    }
    made_venv=1
  else
    say "using the virtual environment in .venv"
  fi
  py=.venv/bin/python
fi
say "installing into $("$py" -c 'import sys; print(sys.prefix)') ($("$py" --version 2>&1))"
if [[ "$dry_run" == 1 ]]; then exit 0; fi

say "installing torch 2.13.0 (the CPU wheel)"
"$py" -m pip install "torch==2.13.0"

say "installing parallalx-jupyter and its test dependencies (builds the JupyterLab extension: needs Node.js >= 20.19)"
"$py" -m pip install -e ".[test]"

say "done: parallalx $("$py" -c 'import parallalx_jupyter; print(parallalx_jupyter.__version__)') is installed"
if [[ "$py" == .venv/bin/python ]]; then
  if [[ "$made_venv" == 1 ]]; then what="made"; else what="used"; fi
  echo "setup $what the virtual environment .venv: activate it in your shell first,"
  echo "  source .venv/bin/activate"
  echo "then run: parallalx demo"
fi
