# shellcheck shell=bash
# Shared setup of the GPU scripts (sourced after `set -uo pipefail`): repository root as the
# working directory, the carried binary unpacked into a temporary folder, and the corpus helper.
# Inputs: $CARRY (default .carry) with spotinfer.xz and minilm-f16/ (its model.safetensors may be
# model.safetensors.xz); $OUT (default ./gpu-out).
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CARRY=${CARRY:-.carry}
FINAL=${OUT:-$PWD/gpu-out}
mkdir -p "$FINAL"
WORK=$(mktemp -d)
PY=${PY:-python3}
BIN=$WORK/spotinfer
xz -dc "$CARRY/spotinfer.xz" > "$BIN" && chmod +x "$BIN"
# Weights that travel xz-compressed (tests/gpu/prepare.sh: minilm-f16) are unpacked once, in place.
for z in "$CARRY"/*/model.safetensors.xz; do
  if [ -f "$z" ] && [ ! -s "${z%.xz}" ]; then xz -dc "$z" > "${z%.xz}.tmp" && mv "${z%.xz}.tmp" "${z%.xz}"; fi
done
export CUDA_CACHE_PATH=$WORK/cuda-cache   # the PTX JIT cache: the first start fills it

# corpus_jobs N CORPUS_JSONL JOBS_JSONL: the generated corpus of N texts, and the same texts as
# OpenAI batch lines for `spotinfer batch`.
corpus_jobs() {
  "$BIN" bench --dump-corpus "$2" --corpus-size "$1" >/dev/null 2>&1
  "$PY" - "$2" "$3" <<'PYEOF'
import json, sys
with open(sys.argv[2], "w") as out:
    for i, line in enumerate(open(sys.argv[1])):
        out.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                              "body": {"input": json.loads(line)["text"]}}) + "\n")
PYEOF
}
