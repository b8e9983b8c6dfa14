#!/usr/bin/env bash
# A Python venv for the gRPC client tests (tests/grpc.rs): `grpcio` and `grpcio-tools`, pinned;
# the tests generate the client from proto/tei.proto with grpcio-tools at run time. Idempotent;
# prints the venv's python as the last stdout line. Cached under target/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPOTINFER_GRPC_VENV:-$PWD/target/grpc-venv}"
PINS=(grpcio==1.84.0 grpcio-tools==1.84.0)
STAMP="$VENV/.spotinfer-$(printf %s "${PINS[*]}" | tr " " "+")"
if [[ ! -f "$STAMP" ]]; then
  echo "make-grpc-venv: creating $VENV with ${PINS[*]}" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "${PINS[@]}" >&2
  "$VENV/bin/python" -c "import grpc, grpc_tools; print('grpcio', grpc.__version__)" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
