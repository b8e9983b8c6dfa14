#!/usr/bin/env bash
# A Python venv with a real OTLP/gRPC trace receiver's parts (grpcio + the OpenTelemetry
# protos), pinned, for tests/otlp.rs (tests/python/otlp_receiver.py). Idempotent; prints the
# venv's python as the last stdout line. Cached under target/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPOTINFER_OTLP_VENV:-$PWD/target/otlp-venv}"
PINS=(grpcio==1.85.4 opentelemetry-proto==1.45.2 protobuf==7.36.2)
STAMP="$VENV/.spotinfer-$(printf %s "${PINS[*]}" | tr " " "+")"
if [[ ! -f "$STAMP" ]]; then
  echo "make-otlp-venv: creating $VENV with ${PINS[*]}" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "${PINS[@]}" >&2
  "$VENV/bin/python" -c "import grpc; from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
