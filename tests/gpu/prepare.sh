#!/usr/bin/env bash
# On the CPU machine, before a GPU lease: build the CUDA binary and fill .carry/ with what
# tests/gpu/fused.sh (and run.sh, quick-check.sh) need on the GPU machine, then print the device
# tool's run command.
#
#   bash tests/gpu/prepare.sh            # build (incremental: ~1 min; clean: ~20-30 min on 2 cores)
#   NO_BUILD=1 bash tests/gpu/prepare.sh # reuse target/cuda/release/spotinfer as it is
#
# .carry/ (git-ignored; the device tool carries at most 64 MiB):
#   spotinfer.xz      the binary (CUDA_COMPUTE_CAP=90: sm_90a, H100/H200 only), debug info
#                     stripped, xz-compressed (~10 MB)
#   minilm-f16/       all-MiniLM-L6-v2 (scripts/fetch-test-model.sh) with its F32 weights stored
#                     as F16 (what the server converts to for --dtype float16 anyway), as
#                     model.safetensors.xz (~39 MB; tests/gpu/common.sh unpacks it there)
#   build-info.json   commit, branch, dirty flag, date, binary sha256, sizes
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CARRY=${CARRY:-.carry}
LIMIT=$((64 * 1024 * 1024))
mkdir -p "$CARRY"

# 1. the CUDA binary
if [ "${NO_BUILD:-0}" != 1 ]; then
  # scripts/cuda-build.sh = `eval "$(scripts/cuda-build.sh --setup-only)"` (CUDA 13.0 wheels from
  # PyPI, link-only stubs) + `cargo build --release --features cuda --target-dir target/cuda`.
  CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} bash scripts/cuda-build.sh --locked --bin spotinfer
fi
BIN=target/cuda/release/spotinfer
[ -x "$BIN" ] || { echo "prepare.sh: no $BIN (build failed?)" >&2; exit 1; }
# The stubs let the binary start here (it then finds no GPU): check the subcommands and flags
# fused.sh uses, so a stale or wrong binary is caught before the lease, not on it.
eval "$(bash scripts/cuda-build.sh --setup-only)"
run_here() { LD_LIBRARY_PATH="$CUDA_HOME/lib/stubs:$CUDA_HOME/lib" "$BIN" "$@"; }
missing=()
run_here selftest --help > /dev/null 2>&1 || missing+=("selftest")
run_here batch --help 2>/dev/null | grep -q -- --gpu-backend || missing+=("batch --gpu-backend")
run_here serve --help 2>/dev/null | grep -q -- --json-output || missing+=("serve --json-output")
if [ ${#missing[@]} -gt 0 ]; then
  echo "prepare.sh: $BIN lacks: ${missing[*]} (build the branch with the fused backend)" >&2
  exit 1
fi
# The decoder families (tiny-qwen3 etc. and the Qwen3 shape) are on main; a binary of the
# `fused` branch alone has none. Warn, do not stop: fused.sh then records those steps as failed.
if ! run_here plan --model-id tests/fixtures/tiny-qwen3 --device cpu --output json > /dev/null 2>&1; then
  echo "prepare.sh: WARNING: this binary does not know qwen3 (no decoder families): the decoder" \
       "and Qwen3-shape steps of fused.sh will fail; build the tree with fused merged into main" >&2
fi
objcopy --strip-debug "$BIN" "$CARRY/spotinfer.tmp"
xz -T0 -6 -c "$CARRY/spotinfer.tmp" > "$CARRY/spotinfer.xz"
rm -f "$CARRY/spotinfer.tmp"

# 2. all-MiniLM-L6-v2 with F16 weights
MODEL_DIR=$(bash scripts/fetch-test-model.sh | tail -n1)
M16=$CARRY/minilm-f16
if [ ! -s "$M16/model.safetensors.xz" ] || [ "$MODEL_DIR/model.safetensors" -nt "$M16/model.safetensors.xz" ]; then
  rm -rf "$M16"
  mkdir -p "$M16/1_Pooling"
  for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt \
           modules.json sentence_bert_config.json config_sentence_transformers.json; do
    [ -f "$MODEL_DIR/$f" ] && cp "$MODEL_DIR/$f" "$M16/"
  done
  cp "$MODEL_DIR/1_Pooling/config.json" "$M16/1_Pooling/"
  # F32 -> F16 in pure Python (struct's IEEE half, round to nearest even): no numpy needed.
  python3 - "$MODEL_DIR/model.safetensors" "$M16/model.safetensors" <<'PYEOF'
import array, json, struct, sys
src, dst = sys.argv[1], sys.argv[2]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
meta = header.pop("__metadata__", None)
out_header, chunks, offset = {}, [], 0
for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = t["data_offsets"]
    raw = data[a:b]
    dtype = t["dtype"]
    if dtype == "F32":
        vals = array.array("f")
        vals.frombytes(raw)
        if sys.byteorder != "little":
            vals.byteswap()
        step = 1 << 20
        raw = b"".join(struct.pack(f"<{len(vals[i:i + step])}e", *vals[i:i + step])
                       for i in range(0, len(vals), step))
        dtype = "F16"
    out_header[name] = {"dtype": dtype, "shape": t["shape"],
                        "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
if meta is not None:
    out_header["__metadata__"] = meta
h = json.dumps(out_header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)))
    f.write(h)
    for c in chunks:
        f.write(c)
print(f"minilm-f16: {len(out_header) - (meta is not None)} tensors, {offset} bytes of weights", file=sys.stderr)
PYEOF
  # xz saves ~10 % (4.5 MB), which the 64 MiB limit needs beside the ~12 MB tree; common.sh
  # unpacks it on the GPU machine.
  xz -T0 -6 "$M16/model.safetensors"
fi

# 3. build info (the GPU machine's copy of the tree has no .git)
SHA=$(sha256sum "$CARRY/spotinfer.xz" | cut -d' ' -f1)
python3 - "$CARRY/build-info.json" <<PYEOF
import json, sys
json.dump({"commit": "$(git rev-parse HEAD 2>/dev/null || echo unknown)",
           "branch": "$(git rev-parse --abbrev-ref HEAD 2>/dev/null || echo unknown)",
           "dirty": $( [ -z "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo False || echo True),
           "built": "$(date -u -r "$BIN" +%Y-%m-%dT%H:%M:%SZ)",
           "prepared": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
           "cuda_compute_cap": "${CUDA_COMPUTE_CAP:-90}",
           "spotinfer_xz_sha256": "$SHA",
           "spotinfer_xz_bytes": $(stat -c %s "$CARRY/spotinfer.xz")},
          open(sys.argv[1], "w"), indent=2)
PYEOF

# 4. sizes: the carry and the working tree travel together, 64 MiB in all
CARRY_BYTES=$(du -sb "$CARRY" | cut -f1)
TREE_BYTES=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } |
  xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
echo "prepare.sh: $CARRY = $((CARRY_BYTES >> 20)) MiB ($(du -sh "$CARRY/spotinfer.xz" | cut -f1) binary)," \
     "working tree ~ $((TREE_BYTES >> 20)) MiB" >&2
if [ $((CARRY_BYTES + TREE_BYTES)) -gt "$LIMIT" ]; then
  echo "prepare.sh: carry + tree exceed 64 MiB: the device tool will refuse the run" >&2
  exit 1
fi

cat <<EOF

Run on the GPU machine (device tool), one call, ~8 minutes on an H200:
  run(carry=["$CARRY"], command="CARRY=$CARRY bash tests/gpu/fused.sh", timeout_s=590)
Results come back as summary.json, summary.txt, selftest.json, logs.tar.gz; copy them to
docs/gpu-results/<date>-<card>/ (see docs/CUDA.md, "GPU verification").
EOF
