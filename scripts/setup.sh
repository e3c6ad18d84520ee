#!/usr/bin/env bash
# Install parallalx-jupyter with its test dependencies into the current Python environment.
# torch is pinned first so pip takes the machine's CPU wheel instead of downloading a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test]"
