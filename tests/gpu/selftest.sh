#!/usr/bin/env bash
# Fused-kernel self-test on a GPU machine: every kernel of src/model/cuda (both attention
# variants) and the cuBLASLt wrapper against the CPU references. Prints one line per case
# (max abs / max rel error) and exits non-zero if any case fails.
#
#   tests/gpu/selftest.sh                 # full matrix (~tens of seconds on an H100/H200)
#   tests/gpu/selftest.sh --quick         # the start-up subset only
#   tests/gpu/selftest.sh --filter attention/tensor-core
#   tests/gpu/selftest.sh --sanitize      # under compute-sanitizer memcheck (slow: use --quick)
#
# Uses `$SPOTINFER_BIN selftest` when that binary has the subcommand (the server wires it);
# otherwise builds and runs the library test `gpu_selftest` with cargo (needs nvcc: the GPU
# machines have CUDA 13.0 in /usr/local/cuda; CUDA_COMPUTE_CAP defaults to 90).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

QUICK=0 FILTER="" SANITIZE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --filter) FILTER=$2; shift ;;
    --sanitize) SANITIZE=1 ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "selftest.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

SAN=()
if [ "$SANITIZE" = 1 ]; then
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  [ -x "$CS" ] || { echo "selftest.sh: compute-sanitizer not found" >&2; exit 2; }
  SAN=("$CS" --tool memcheck --leak-check no --error-exitcode 99)
fi

nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv,noheader 2>/dev/null || true

BIN=${SPOTINFER_BIN:-target/cuda/release/spotinfer}
if [ -x "$BIN" ] && "$BIN" selftest --help > /dev/null 2>&1; then
  ARGS=()
  [ "$QUICK" = 1 ] && ARGS+=(--quick)
  [ -n "$FILTER" ] && ARGS+=(--filter "$FILTER")
  exec "${SAN[@]}" "$BIN" selftest "${ARGS[@]}"
fi

export SPOTINFER_SELFTEST_QUICK=$QUICK SPOTINFER_SELFTEST_FILTER=$FILTER
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
if ! command -v nvcc > /dev/null; then
  export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}; export PATH="$CUDA_HOME/bin:$PATH"
fi
# Build the test binary first, then run it directly (so the sanitizer wraps only the test).
TEST_BIN=$(cargo test --release --features cuda --target-dir target/cuda --lib --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$TEST_BIN" ] || { echo "selftest.sh: building the test binary failed; rerun: cargo test --release --features cuda --target-dir target/cuda --lib --no-run" >&2; exit 2; }
exec "${SAN[@]}" "$TEST_BIN" gpu_selftest --ignored --nocapture --test-threads 1
