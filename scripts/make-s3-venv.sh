#!/usr/bin/env bash
# A Python venv with a real S3-compatible server for the batch-job tests on object storage:
# moto's server (conditional writes: If-None-Match / If-Match on PutObject) and boto3, pinned.
# Idempotent and safe to run from parallel tests (one creates it, the others wait); prints the
# venv's python as the last stdout line. Cached under target/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPOTINFER_S3_VENV:-$PWD/target/s3-venv}"
PINS=("moto[server]==5.2.6" boto3==1.44.18)
STAMP="$VENV/.spotinfer-$(printf %s "${PINS[*]}" | tr " []" "+__")"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [[ ! -f "$STAMP" ]]; then
  echo "make-s3-venv: creating $VENV with ${PINS[*]}" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}" >&2
  "$VENV/bin/python" -c "import moto, boto3; print('moto', moto.__version__, 'boto3', boto3.__version__)" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
