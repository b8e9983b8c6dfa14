#!/usr/bin/env bash
# Build a throw-away Python venv with a RECENT torch / transformers / sentence-transformers
# stack, used only to (re)generate the tiny model fixtures and real-model references under
# tests/fixtures/ (scripts/make_tiny_models.py, scripts/check_fixtures.py,
# scripts/make_real_references.py).  Nothing in the Rust build or CI needs it.
#
# Why this stack (and not scripts/make-ref-venv.sh's torch 1.12 / transformers 4.44):
#   ModernBERT, Qwen3 and Gemma3 with `use_bidirectional_attention` (EmbeddingGemma) need
#   transformers >= 4.56, and SparseEncoder needs sentence-transformers >= 5.  transformers
#   4.57.6 is the newest 4.x; torch 2.9.1 is contemporary with it.  Only PyPI is reachable:
#   torch's Linux wheels pull the nvidia-* CUDA wheels (several GB, no GPU needed at run time).
#
# Usage: scripts/make-fixture-venv.sh [TARGET_DIR]   (default: /tmp/spotinfer-fixture-venv,
#        outside the repository)
#        FIXTURE_PYTHON=/path/to/python3.12 scripts/make-fixture-venv.sh ...   (CPython 3.12)
# A second, small venv "<TARGET>-tf5" (transformers 5.24.0, no torch) is built beside it: the
# generator uses it only to write config.transformers5.json (how transformers 5 serializes
# the same configs: rope_parameters / layer_types) for the RoPE fixtures.
# Idempotent: a venv built from the same pins is reused.  The absolute venv path is printed
# as the last stdout line; logs go to stderr.
# Disk: ~6 GB installed; download ~3 GB; ~3 minutes.
set -euo pipefail

log() { echo "make-fixture-venv: $*" >&2; }

TARGET="${1:-/tmp/spotinfer-fixture-venv}"
mkdir -p "$(dirname "$TARGET")"
TARGET="$(cd "$(dirname "$TARGET")" && pwd -P)/$(basename "$TARGET")"

# Every package pinned (the set pip resolved on 2026-12-01), so a rebuild gives the same stack.
REQUIREMENTS="$(cat <<'PINS'
torch==2.9.1
transformers==4.57.6
sentence-transformers==5.7.0
tokenizers==0.22.2
safetensors==0.8.0
huggingface_hub==0.36.2
numpy==2.5.5
scipy==1.18.1
scikit-learn==1.9.1
triton==3.5.1
nvidia-cublas-cu12==12.8.4.1
nvidia-cuda-cupti-cu12==12.8.90
nvidia-cuda-nvrtc-cu12==12.8.93
nvidia-cuda-runtime-cu12==12.8.90
nvidia-cudnn-cu12==9.10.2.21
nvidia-cufft-cu12==11.3.3.83
nvidia-cufile-cu12==1.13.1.3
nvidia-curand-cu12==10.3.9.90
nvidia-cusolver-cu12==11.7.3.90
nvidia-cusparse-cu12==12.5.8.93
nvidia-cusparselt-cu12==0.7.1
nvidia-nccl-cu12==2.27.5
nvidia-nvjitlink-cu12==12.8.93
nvidia-nvshmem-cu12==3.3.20
nvidia-nvtx-cu12==12.8.90
sympy==1.14.0
mpmath==1.3.0
networkx==3.7
Jinja2==3.1.6
MarkupSafe==3.0.4
setuptools==84.2.1
filelock==4.3.1
fsspec==2026.9.0
hf-xet==1.8.0
packaging==26.4
PyYAML==6.0.4
regex==2026.11.19
requests==2.34.2
certifi==2026.10.19.post1
charset-normalizer==3.5.3
idna==3.20
urllib3==2.8.0
tqdm==4.70.1
typing_extensions==4.16.0
joblib==1.6.0
threadpoolctl==3.8.0
narwhals==2.29.0
cloudpickle==3.1.3
PINS
)"
TF5_REQUIREMENTS="$(cat <<'PINS'
transformers==5.24.0
huggingface_hub==2.4.0
tokenizers==0.23.3
safetensors==0.8.0
numpy==2.5.5
packaging==26.4
PyYAML==6.0.4
regex==2026.11.19
tqdm==4.70.1
filelock==4.3.1
fsspec==2026.9.0
hf-xet==1.8.0
typing_extensions==4.16.0
typer==0.29.2
click==8.5.1
rich==15.0.0
markdown-it-py==4.3.0
mdurl==0.1.2
Pygments==2.21.0
shellingham==1.5.4
annotated-doc==0.0.7
annotated-types==0.8.0
pydantic==2.14.4
pydantic_core==2.50.5
typing-inspection==0.4.5
anyio==4.16.0
h11==0.16.0
httpcore2==2.16.2
httpx2==2.16.2
idna==3.20
truststore==0.10.5
PINS
)"
STAMP_WANT="$(printf '%s\n%s\n' "$REQUIREMENTS" "$TF5_REQUIREMENTS" | sha256sum | cut -d' ' -f1)"
STAMP_FILE="$TARGET/.spotinfer-fixture-venv"

check_venv() {
  HF_HUB_OFFLINE=1 "$TARGET-tf5/bin/python" -c 'import transformers; assert transformers.__version__ == "5.24.0"' >&2 || return 1
  HF_HUB_OFFLINE=1 "$TARGET/bin/python" - <<'PY' >&2
import torch, transformers, sentence_transformers, tokenizers, safetensors, numpy
from sentence_transformers import SparseEncoder  # noqa: F401  (sentence-transformers >= 5)
from transformers import Gemma3TextConfig, ModernBertConfig, Qwen3Config  # noqa: F401
assert Gemma3TextConfig(use_bidirectional_attention=True).use_bidirectional_attention
x = torch.ones(2, 3, dtype=torch.float64) @ torch.ones(3, 2, dtype=torch.float64)
assert float(x.sum()) == 12.0
print("torch", torch.__version__, "transformers", transformers.__version__,
      "sentence-transformers", sentence_transformers.__version__,
      "tokenizers", tokenizers.__version__, "numpy", numpy.__version__)
PY
}

if [[ -x "$TARGET/bin/python" && -f "$STAMP_FILE" && "$(cat "$STAMP_FILE")" == "$STAMP_WANT" ]]; then
  if check_venv; then
    echo "$TARGET"
    exit 0
  fi
  log "existing venv at $TARGET is broken; rebuilding"
fi

# --- find a CPython 3.12 (the pins are for 3.12: numpy 2.5 has no 3.11 wheels) ---------------
find_python() {
  local c
  # pyenv's version folders before PATH: a pyenv shim for a non-global version fails to run
  for c in "${FIXTURE_PYTHON:-}" /root/.pyenv/versions/3.12.*/bin/python3.12 \
           "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12.*/bin/python3.12 \
           python3.12 /usr/bin/python3.12; do
    [[ -n "$c" ]] || continue
    if command -v "$c" >/dev/null 2>&1 &&
       "$c" -c 'import sys, venv; sys.exit(0 if sys.version_info[:2] == (3, 12) else 1)' 2>/dev/null; then
      command -v "$c"
      return 0
    fi
  done
  return 1
}
if ! PY="$(find_python)"; then
  log "need CPython 3.12; set FIXTURE_PYTHON=/path/to/python3.12 (e.g. 'pyenv install 3.12')"
  exit 1
fi
log "using $PY"

rm -rf "$TARGET"
"$PY" -m venv "$TARGET"
export PIP_DISABLE_PIP_VERSION_CHECK=1
REQ_FILE="$(mktemp)"
trap 'rm -f "$REQ_FILE"' EXIT
printf '%s\n' "$REQUIREMENTS" > "$REQ_FILE"
log "installing pinned stack (torch 2.9.1 + nvidia-* CUDA wheels, ~3 GB download)"
# --only-binary: never build anything from source.
"$TARGET/bin/python" -m pip install --quiet --only-binary=:all: --no-cache-dir -r "$REQ_FILE" >&2

rm -rf "$TARGET-tf5"
"$PY" -m venv "$TARGET-tf5"
printf '%s\n' "$TF5_REQUIREMENTS" > "$REQ_FILE"
log "installing the transformers-5 side venv at $TARGET-tf5 (configs only, no torch)"
"$TARGET-tf5/bin/python" -m pip install --quiet --only-binary=:all: --no-cache-dir -r "$REQ_FILE" >&2

check_venv
echo "$STAMP_WANT" > "$STAMP_FILE"
echo "$TARGET"
