#!/usr/bin/env bash
# The test command: lint, check the installed extensions, type-check and unit-test the lab
# extension, run the whole pytest suite (real Jupyter servers, Dask clusters, Chromium).
# `--fast`: the same lint steps, then only the fast tier (`pytest -m "not e2e"`, see
# tests/conftest.py). Other arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
args=()
for arg in "$@"; do
  if [[ "$arg" == "--fast" ]]; then fast=1; else args+=("$arg"); fi
done
python -m ruff check parallalx_jupyter tests benchmarks
server_exts=$(jupyter server extension list 2>&1)
grep -q "parallalx_jupyter.*enabled" <<<"$server_exts" \
  || { echo "server extension not enabled"; echo "$server_exts"; exit 1; }
lab_exts=$(jupyter labextension list 2>&1)
grep -qE "parallalx-jupyter.*enabled.*OK" <<<"$lab_exts" \
  || { echo "lab extension not installed"; echo "$lab_exts"; exit 1; }
(cd labextension && jlpm lint && jlpm typecheck && jlpm test)
if (( fast )); then
  python -m pytest -q -m "not e2e" ${args[@]+"${args[@]}"}
else
  # Two pytest workers, one test file each at a time (module fixtures stay per file), and
  # alongside them the browser tests in a pytest of their own: Playwright's sync API leaves
  # an event loop running in its process, which other tests' fixtures cannot close.
  ui_log=$(mktemp)
  python -m pytest -q tests/ui ${args[@]+"${args[@]}"} >"$ui_log" 2>&1 &
  ui_pid=$!
  rest=0; ui=0
  python -m pytest -q -n 2 --dist loadfile --ignore=tests/ui ${args[@]+"${args[@]}"} || rest=$?
  wait "$ui_pid" || ui=$?
  echo "--- browser tests (tests/ui)"; cat "$ui_log"; rm -f "$ui_log"
  if (( rest || ui )); then exit 1; fi
fi
