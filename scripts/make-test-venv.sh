#!/usr/bin/env bash
# A Python venv with the clients users really run against us, pinned: the official `openai`
# SDK (embeddings, Files and Batches), `huggingface_hub` (InferenceClient against a TEI-style
# server) and `cohere` (rerank). Idempotent; prints the venv's python as the last stdout line.
# Cached under target/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPOTINFER_TEST_VENV:-$PWD/target/test-venv}"
PINS=(openai==1.109.1 huggingface_hub==2.4.0 cohere==7.3.1 numpy==2.3.5)
STAMP="$VENV/.spotinfer-$(printf %s "${PINS[*]}" | tr " " "+")"
if [[ ! -f "$STAMP" ]]; then
  echo "make-test-venv: creating $VENV with ${PINS[*]}" >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: "${PINS[@]}" >&2
  "$VENV/bin/python" -c "import openai, huggingface_hub, cohere; print('openai', openai.__version__, 'huggingface_hub', huggingface_hub.__version__, 'cohere', cohere.__version__)" >&2
  touch "$STAMP"
fi
echo "$VENV/bin/python"
