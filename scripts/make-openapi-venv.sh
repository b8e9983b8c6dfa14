#!/usr/bin/env bash
# A Python venv with openapi-spec-validator, pinned, to check /api-doc/openapi.json
# (tests/openapi.rs). Idempotent; prints the venv's python as the last stdout line. Cached
# under target/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPOTINFER_OPENAPI_VENV:-$PWD/target/openapi-venv}"
PINS=(openapi-spec-validator==0.7.2)
STAMP="$VENV/.spotinfer-$(printf %s "${PINS[*]}" | tr " " "+")"
if [[ ! -f "$STAMP" ]]; then
  echo "make-openapi-venv: creating $VENV with ${PINS[*]}" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "${PINS[@]}" >&2
  "$VENV/bin/python" -c "import openapi_spec_validator" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
