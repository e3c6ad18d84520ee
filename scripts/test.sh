#!/usr/bin/env bash
# The test command: lint, check the installed extensions, run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m ruff check parallalx_jupyter tests benchmarks
jupyter server extension list 2>&1 | grep -q "parallalx_jupyter.*enabled" \
  || { echo "server extension not enabled"; jupyter server extension list; exit 1; }
jupyter labextension list 2>&1 | grep -qE "parallalx-jupyter.*enabled.*OK" \
  || { echo "lab extension not installed"; jupyter labextension list; exit 1; }
jlpm --cwd labextension typecheck
jlpm --cwd labextension test
python -m pytest -q "$@"
