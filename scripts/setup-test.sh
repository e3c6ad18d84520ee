#!/usr/bin/env bash
# What the tests need beyond the package: Debian's Chromium for the JupyterLab panel tests
# (Playwright drives it through executable_path=/usr/bin/chromium; its own browser download
# fails offline), and the lab extension's node modules for its type-check and unit tests.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
(cd labextension && jlpm install --immutable >/dev/null)
