#!/usr/bin/env bash
# Build a throw-away Python venv with the REAL sentence-transformers / transformers
# / torch stack, used only to (re)generate reference vectors under tests/fixtures/
# (see scripts/make_reference.py and scripts/make_tiny_bert.py).  Nothing in the
# Rust build or CI needs it.
#
# Why Python 3.10 + torch 1.12.1:
#   Only PyPI is reachable (the download.pytorch.org CPU index is not).  Every
#   torch >= 1.13 Linux x86_64 wheel on PyPI depends on separate nvidia-* CUDA
#   wheels (several GB) and `import torch` fails without them: libtorch_cuda.so
#   is a hard DT_NEEDED of libtorch.so/libtorch_python.so and needs cudart,
#   cublas, cudnn, nccl, ...  torch 1.12.1 is the last PyPI wheel that is
#   self-contained (CUDA 10.2 runtime bundled inside one ~750 MB wheel, no
#   nvidia-* deps) and works on a CPU-only box.  Its newest CPython is 3.10,
#   so the venv uses 3.10, and the HF stack is pinned to versions that still
#   support torch 1.12 (transformers 4.44.2, sentence-transformers 3.0.1,
#   numpy < 2).
#
# Usage: scripts/make-ref-venv.sh [TARGET_DIR]     (default: target/ref-venv)
#        REF_PYTHON=/path/to/python3.10 scripts/make-ref-venv.sh ...
# Idempotent: a venv built from the same pins is reused.  The absolute venv
# path is printed as the last stdout line; logs go to stderr.
# Disk: ~2 GB installed; download ~1 GB.
set -euo pipefail

log() { echo "make-ref-venv: $*" >&2; }

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
TARGET="${1:-$REPO_ROOT/target/ref-venv}"
mkdir -p "$(dirname "$TARGET")"
TARGET="$(cd "$(dirname "$TARGET")" && pwd -P)/$(basename "$TARGET")"

# Every package pinned (this is the set pip resolved on 2026-11-25), so a
# rebuild gives the same stack.
REQUIREMENTS="$(cat <<'EOF'
torch==1.12.1
transformers==4.44.2
sentence-transformers==3.0.1
tokenizers==0.19.1
safetensors==0.8.0
huggingface_hub==0.36.2
numpy==1.26.4
scipy==1.15.3
scikit-learn==1.7.2
pillow==12.3.0
tqdm==4.70.1
regex==2026.9.29
PyYAML==6.0.4
packaging==26.4
filelock==4.1.0
fsspec==2026.9.0
typing_extensions==4.16.0
requests==2.34.2
certifi==2026.10.19.post1
charset-normalizer==3.5.3
idna==3.20
urllib3==2.8.0
hf-xet==1.8.0
joblib==1.6.0
threadpoolctl==3.8.0
EOF
)"
STAMP_WANT="$(printf '%s\n' "$REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
STAMP_FILE="$TARGET/.spotinfer-ref-venv"

check_venv() {
  "$TARGET/bin/python" - <<'EOF' >&2
import torch, transformers, sentence_transformers, tokenizers, safetensors, numpy
x = torch.ones(2, 3) @ torch.ones(3, 2)
assert float(x.sum()) == 12.0
print("torch", torch.__version__, "transformers", transformers.__version__,
      "sentence-transformers", sentence_transformers.__version__,
      "tokenizers", tokenizers.__version__, "numpy", numpy.__version__)
EOF
}

if [[ -x "$TARGET/bin/python" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$STAMP_WANT" ]]; then
  if check_venv; then
    echo "$TARGET"
    exit 0
  fi
  log "existing venv at $TARGET is broken; rebuilding"
fi

# --- find a CPython 3.10 ------------------------------------------------------------
find_python() {
  local c
  for c in "${REF_PYTHON:-}" python3.10 /root/.pyenv/versions/3.10.*/bin/python3.10 \
           "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python3.10 /usr/bin/python3.10; do
    [[ -n "$c" ]] || continue
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 10) else 1)' 2>/dev/null; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}
if ! PY="$(find_python)"; then
  log "need CPython 3.10 (torch 1.12.1 has no wheel for newer Pythons)."
  log "set REF_PYTHON=/path/to/python3.10, or e.g. 'pyenv install 3.10' / 'apt-get install python3.10-venv'"
  exit 1
fi
log "using $PY"

rm -rf "$TARGET"
"$PY" -m venv "$TARGET"
export PIP_DISABLE_PIP_VERSION_CHECK=1
REQ_FILE="$(mktemp)"
trap 'rm -f "$REQ_FILE"' EXIT
printf '%s\n' "$REQUIREMENTS" > "$REQ_FILE"
log "installing pinned stack (torch 1.12.1 wheel is ~750 MB)"
# --only-binary: never build anything from source.
"$TARGET/bin/python" -m pip install --quiet --only-binary=:all: --no-cache-dir -r "$REQ_FILE" >&2

check_venv
echo "$STAMP_WANT" > "$STAMP_FILE"
echo "$TARGET"
