#!/usr/bin/env bash
# The one prepared check of the fused backend (selftest, reference vectors, speed beside the peer,
# HTTP, the absurd budget, summary.json) is tests/gpu/fused.sh (after tests/gpu/prepare.sh); this
# script stays as the lifecycle check (FP16 use, NVML gauges, SIGTERM under load) of either backend.
# GPU verification, run on a machine with an NVIDIA GPU (the lent H100/H200), in one command:
#   1. serve all-MiniLM-L6-v2 in FP16 and check held-out reference vectors (cosine >= 0.999);
#   2. check that F16 is really used (weights' memory ~ half of F32) and that NVML gauges appear;
#   3. load benchmark at concurrency 1-256 with MiniLM and a BERT-large-shaped model (random
#      weights), recording throughput, p50/p99, device busy ratio and GPU utilisation;
#   4. SIGTERM under load on the GPU: zero lost requests;
#   and beside 3, on the same corpus in the same run: the peer (sentence-transformers encode() in
#   FP16 on the GPU, tests/gpu/peer_st.py) and offline `spotinfer batch`.
#
# Inputs (built on the CPU machine, see docs/CUDA.md "GPU verification"):
#   $CARRY/spotinfer.xz     the CUDA binary (CUDA_COMPUTE_CAP=90), xz-compressed
#   $CARRY/minilm-f16/      all-MiniLM-L6-v2 with its weights stored as F16 (same values the
#                           server would convert to; halves the transfer)
# Outputs: $OUT (or ./gpu-out): results.json, bench-*.json and logs.tar.gz (server logs, metrics,
# tables: few files, as the device tool returns at most 8); a summary on stdout.
set -uo pipefail
. "$(dirname "$0")/common.sh"
OUT=$WORK/out   # everything is written here; the end copies the results and packs the logs
mkdir -p "$OUT"
finish() {
  cp "$OUT"/results.json "$OUT"/bench-*.json "$FINAL"/ 2>/dev/null
  tar -C "$OUT" -czf "$FINAL/logs.tar.gz" --exclude='bench-*.json' --exclude=results.json .
}
trap finish EXIT
MINILM=$CARRY/minilm-f16
export RUST_LOG=info
RESULTS=$OUT/results.json
echo '{}' > "$RESULTS"
record() { "$PY" - "$RESULTS" "$1" "$2" <<'EOF'
import json, sys
path, key, value = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.load(open(path))
try:
    d[key] = json.loads(value)
except json.JSONDecodeError:
    d[key] = value
json.dump(d, open(path, "w"), indent=2)
EOF
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/nvidia-smi.txt"
record gpu "\"$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader)\""
record date "\"$(date -u +%Y-%m-%dT%H:%MZ)\""

PORT=3000
start_server() { # model dtype extra-args... ; sets SERVER_PID and COLD (exec -> /ready, seconds)
  local model=$1 dtype=$2; shift 2
  if curl -s -o /dev/null "http://127.0.0.1:$PORT/health"; then
    echo "port $PORT is already in use: a server from an earlier step is still running" >&2
    return 1
  fi
  local t0; t0=$(date +%s.%N)
  "$BIN" serve --model-id "$model" --dtype "$dtype" --hostname 127.0.0.1 --port $PORT \
    --prometheus-port 9000 "$@" >>"$OUT/server-$(basename "$model")-$dtype.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 1200); do
    if curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; then
      COLD=$("$PY" -c "import time; print(round(time.time() - $t0, 2))")
      return 0
    fi
    if ! kill -0 $SERVER_PID 2>/dev/null; then echo "server died" >&2; return 1; fi
    sleep 0.1
  done
  echo "server not ready" >&2; return 1
}
stop_server() { kill -TERM "$SERVER_PID" 2>/dev/null; wait "$SERVER_PID" 2>/dev/null; }
gpu_mem_of() { nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits |
  awk -F', ' -v p="$1" '$1==p {print $2}'; }

# --- 1. correctness in FP16 -------------------------------------------------------------------
start_server "$MINILM" float16 --drain-delay 0 || exit 1
record minilm_cold_start_s "$COLD"
"$PY" - "$PORT" tests/fixtures/minilm_reference.json > "$OUT/reference-check.json" <<'EOF'
import json, math, sys, urllib.request
port, ref = sys.argv[1], json.load(open(sys.argv[2]))
items = ref["items"]
worst, rows = 1.0, []
for i in range(0, len(items), 8):
    chunk = items[i:i + 8]
    req = urllib.request.Request(f"http://127.0.0.1:{port}/embed",
        data=json.dumps({"inputs": [c["text"] for c in chunk], "normalize": False}).encode(),
        headers={"Content-Type": "application/json"})
    got = json.load(urllib.request.urlopen(req))
    for c, g in zip(chunk, got):
        w = c["mean"]
        cos = sum(a * b for a, b in zip(g, w)) / math.sqrt(sum(a * a for a in g) * sum(b * b for b in w))
        worst = min(worst, cos)
        rows.append({"id": c["id"], "cosine": cos})
info = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/info"))
print(json.dumps({"min_cosine": worst, "items": len(rows), "dtype": info.get("model_dtype"),
                  "device": info.get("device"), "pass": worst >= 0.999}))
EOF
cat "$OUT/reference-check.json"
record reference_check "$(cat "$OUT/reference-check.json")"
curl -s "http://127.0.0.1:$PORT/metrics" > "$OUT/metrics-minilm-f16.txt"
nvml=$(grep -c '^inference_gpu_\(utilization_ratio\|memory_used_bytes\|memory_total_bytes\) ' "$OUT/metrics-minilm-f16.txt")
record nvml_gauges_present "$nvml"
mem16=$(gpu_mem_of "$SERVER_PID")
stop_server

# --- 2. F16 really used: process GPU memory at F32 vs F16 (same model, idle after warm-up) -----
start_server "$MINILM" float32 --drain-delay 0 || exit 1
mem32=$(gpu_mem_of "$SERVER_PID")
stop_server
record minilm_gpu_mem_mib "{\"float16\": ${mem16:-null}, \"float32\": ${mem32:-null}, \"weights_f32_mib\": 87, \"cold_start_f32_s\": $COLD}"

# --- 3. load benchmarks -----------------------------------------------------------------------
bench() { # name model
  local name=$1 model=$2
  start_server "$model" float16 --drain-delay 0 --max-batch-tokens 16384 || return 1
  record "${name}_cold_start_s" "$COLD"
  "$BIN" bench --url "http://127.0.0.1:$PORT" --concurrency 1,8,32,64,128,256 --corpus-size 4096 \
    --requests 4096 --max-time "${BENCH_SECONDS:-20}" --server-pid "$SERVER_PID" \
    --json "$OUT/bench-$name.json" 2>&1 | tee "$OUT/bench-$name.txt"
  curl -s "http://127.0.0.1:$PORT/info" > "$OUT/info-$name.json"
  local m; m=$(gpu_mem_of "$SERVER_PID"); record "${name}_gpu_mem_after_bench_mib" "${m:-null}"
  stop_server
}
bench minilm "$MINILM"

# --- 3b. the peer and offline `spotinfer batch` on the same corpus, in the same run ------------
CORPUS=$WORK/corpus.jsonl
# 16,384 texts: long enough that model load and warm-up do not dominate the offline runs.
corpus_jobs "${OFFLINE_TEXTS:-16384}" "$CORPUS" "$WORK/jobs.jsonl"
peer_and_offline() { # name model max_seq_length
  local name=$1 model=$2 maxlen=$3
  "$PY" tests/gpu/peer_st.py "$model" "$CORPUS" "$maxlen" >"$OUT/peer-$name.json" 2>"$OUT/peer-$name.log" &&
    record "peer_${name}" "$(cat "$OUT/peer-$name.json")"
  tail -c 600 "$OUT/peer-$name.json"; echo
  for budget in 16384 65536; do
    rm -f "$WORK/batch-out.jsonl" "$WORK/batch-out.jsonl.ckpt"
    local t0 t1; t0=$(date +%s.%N)
    "$BIN" batch --model-id "$model" --dtype float16 --input "$WORK/jobs.jsonl" \
      --output "$WORK/batch-out.jsonl" --max-batch-tokens "$budget" --no-progress \
      >"$OUT/batch-$name-$budget.log" 2>&1
    t1=$(date +%s.%N)
    "$PY" - "$WORK/batch-out.jsonl" "$t0" "$t1" "$budget" "$OUT/batch-$name-$budget.log" \
      >"$OUT/offline-$name-$budget.json" <<'EOF'
import json, re, sys
path, t0, t1, budget, log = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
lines = [json.loads(line) for line in open(path)]
ok = sum(1 for r in lines if (r.get("response") or {}).get("status_code") == 200)
secs = t1 - t0
load = re.search(r"load_ms\D{0,12}?(\d+)", open(log).read())
load_s = int(load.group(1)) / 1000 if load else 0.0
print(json.dumps({"max_batch_tokens": budget, "lines": len(lines), "ok": ok,
                  "seconds_incl_model_load": round(secs, 3), "model_load_s": load_s,
                  "sentences_per_s": round(ok / secs, 1),
                  "sentences_per_s_after_load": round(ok / (secs - load_s), 1)}))
EOF
    cat "$OUT/offline-$name-$budget.json"
    record "offline_${name}_${budget}" "$(cat "$OUT/offline-$name-$budget.json")"
  done
}
peer_and_offline minilm "$MINILM" 256

# A BERT-large-shaped model (24 layers, hidden 1024, 16 heads, 335 M parameters), random weights.
LARGE=$WORK/bert-large-random
"$PY" tests/gpu/make_bert_large.py "$LARGE" "$MINILM"
bench bert-large "$LARGE"
peer_and_offline bert-large "$LARGE" 512
start_server "$LARGE" float16 --drain-delay 0 && l16=$(gpu_mem_of "$SERVER_PID"); stop_server
start_server "$LARGE" float32 --drain-delay 0 && l32=$(gpu_mem_of "$SERVER_PID"); stop_server
record bert_large_gpu_mem_mib "{\"float16\": ${l16:-null}, \"float32\": ${l32:-null}, \"weights_f16_mib\": 639}"

# --- 4. SIGTERM under load --------------------------------------------------------------------
start_server "$MINILM" float16 --drain-delay 1 --drain-timeout 10 || exit 1
"$BIN" bench --url "http://127.0.0.1:$PORT" --concurrency 64 --corpus-size 1024 --requests 100000 \
  --max-time 30 --no-warmup --json "$OUT/bench-sigterm.json" > "$OUT/bench-sigterm.txt" 2>&1 &
BENCH_PID=$!
# Signal once the load is really flowing (the bench tokenises its corpus first).
for _ in $(seq 1 300); do
  n=$(curl -s "http://127.0.0.1:$PORT/metrics" |
      awk '/^inference_requests_total\{code="200",route="\/v1\/embeddings"\}/ {print int($2)}')
  [ "${n:-0}" -gt 200 ] && break
  sleep 0.1
done
sleep 1
t0=$(date +%s.%N)
kill -TERM "$SERVER_PID"
wait "$SERVER_PID"; code=$?
exit_s=$("$PY" -c "import time; print(round(time.time() - $t0, 2))")
wait "$BENCH_PID"
cat "$OUT/bench-sigterm.txt"
"$PY" - "$OUT/bench-sigterm.json" "$code" "$exit_s" > "$OUT/sigterm.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["levels"][0]
print(json.dumps({"exit_code": int(sys.argv[2]), "seconds_to_exit": float(sys.argv[3]),
                  "served": r["requests"] - r["errors"], "clean_503": r["refused_with_retry_after"],
                  "connection_refused": r["connection_refused"], "lost": r["lost"],
                  "pass": int(sys.argv[2]) == 0 and r["lost"] == 0}))
EOF
record sigterm_under_load "$(cat "$OUT/sigterm.json")"
grep -h "drain complete" "$OUT"/server-minilm-f16-float16.log | tail -1 || true

echo "=== summary"; cat "$RESULTS"
