#!/usr/bin/env bash
# The sentence-transformers wheel whose `quantize_embeddings` the quantized embedding outputs
# are checked against (tests/python/cohere_embed.py loads its quantization.py alone: only numpy
# is needed). Pinned by version and sha256; cached under target/ (git-ignored). Prints the
# wheel's path as the last stdout line. Usage: scripts/fetch-st-quantization.sh PYTHON
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${1:?usage: fetch-st-quantization.sh PYTHON (with pip)}"
VERSION=3.0.1
SHA256=01050cc4053c49b9f5b78f6980b5a72db3fd3a0abb9169b1792ac83875505ee6
DIR="$PWD/target/st-quantization"
WHEEL="$DIR/sentence_transformers-$VERSION-py3-none-any.whl"
if [[ ! -f "$WHEEL" ]] || ! echo "$SHA256  $WHEEL" | sha256sum -c --quiet - >/dev/null 2>&1; then
  echo "fetch-st-quantization: downloading sentence-transformers==$VERSION" >&2
  rm -rf "$DIR" && mkdir -p "$DIR"
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "sentence-transformers==$VERSION" -d "$DIR" >&2
  echo "$SHA256  $WHEEL" | sha256sum -c --quiet - >&2
fi
echo "$WHEEL"
