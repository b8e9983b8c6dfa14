#!/usr/bin/env bash
# A Python venv with the official `openai` SDK, for the end-to-end test that drives the Files
# and Batches API with unchanged client code. Idempotent; prints the venv's python as the last
# stdout line. Cached under target/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPOTINFER_TEST_VENV:-$PWD/target/test-venv}"
PIN="openai==1.109.1"
STAMP="$VENV/.spotinfer-$PIN"
if [[ ! -f "$STAMP" ]]; then
  echo "make-test-venv: creating $VENV with $PIN" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "$PIN" >&2
  "$VENV/bin/python" -c "import openai; print('openai', openai.__version__)" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
