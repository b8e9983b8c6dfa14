#!/usr/bin/env bash
# The fused CUDA backend on a GPU machine, in one command (~7-8 minutes on an H200):
#   1. `spotinfer selftest`: every fused kernel against its CPU reference, then the tiny fixtures
#      (rescaled to head dims the kernels have) on the fused backend against the reference
#      backend, float16 and bfloat16;
#   2. reference vectors: all-MiniLM-L6-v2 through `spotinfer batch` on both backends, float16 and
#      bfloat16, against tests/fixtures/minilm_reference.json; the tiny decoder fixtures and
#      tiny-qwen3-reranker served on the GPU against their committed transformers references.
#      Bounds: float32 (reference backend) cosine >= 0.9999 / |d score| <= 1e-4 as on the CPU;
#      float16 cosine >= 0.999; bfloat16 cosine >= 0.98 (8 mantissa bits: MiniLM reached 0.9858
#      on the CPU's reference backend); |d score| <= 1e-2 in both. The fused backend refuses
#      float32 and head dims without a kernel, so each step records the backend that ran;
#   3. speed beside the peer, same corpus, same run: offline `spotinfer batch` fused vs reference
#      and sentence-transformers encode() (tests/gpu/peer_st.py) for MiniLM and the BERT-large
#      shape in float16 and a Qwen3-0.6B shape (tests/gpu/make_qwen3_shape.py) in bfloat16, with
#      the cosines between the three's vectors of the same texts;
#   4. memory: `spotinfer plan`'s GPU memory prediction for the Qwen3 shape against the serving
#      process's real GPU memory (nvidia-smi) after a load run, fused and reference;
#   4b. HTTP: MiniLM and BERT-large on both backends at concurrency 1 / 32 / 256 (`spotinfer
#      bench`); then `--max-batch-tokens 4000000` on the fused backend under load: the process
#      must survive (memory cap, split-and-retry) and keep answering;
#   5. $OUT/summary.json (every step: pass/fail, figures; versions, GPU, date, commit) and a table.
#
#   CARRY=.carry bash tests/gpu/fused.sh        # inputs: tests/gpu/prepare.sh (CPU machine)
#
# Every step runs under `timeout`, a failed step is recorded and the next one runs; the whole
# script stops starting optional work after DEADLINE_S (default 500) seconds so the summary is
# always written. summary.json is rewritten after every step (a kill leaves what was done).
# Outputs in $OUT (the device tool returns at most 8 files): summary.json, summary.txt,
# selftest.json, logs.tar.gz (every log and per-step JSON).
# Knobs: DEVICE (cuda:0), LINES (8192 corpus texts), BUDGET (16384 --max-batch-tokens),
# DEADLINE_S, FIXTURE_RUNS, QWEN_LAYERS (28), SKIP (space-separated step groups to leave out: selftest reference
# fixtures speed memory http oom), PEER_DEVICE (cuda). DEVICE=cpu PEER_DEVICE=cpu gives a CPU dry run.
set -uo pipefail
T_START=$SECONDS
. "$(dirname "$0")/common.sh"
DEVICE=${DEVICE:-cuda:0}
PEER_DEVICE=${PEER_DEVICE:-cuda}
LINES=${LINES:-8192}
BUDGET=${BUDGET:-16384}
DEADLINE_S=${DEADLINE_S:-500}
SKIP=" ${SKIP:-} "
LOGS=$WORK/logs
mkdir -p "$LOGS"
S=$FINAL/summary.json
H=(timeout -k 5 120 "$PY" tests/gpu/fused_check.py)
export RUST_LOG=${RUST_LOG:-info}
PORT=${PORT:-39171}
URL=http://127.0.0.1:$PORT
SERVER_PID=""
rm -f "$S"

pack() { tar -C "$WORK" -czf "$FINAL/logs.tar.gz" logs 2>/dev/null; }
cleanup() {
  [ -n "$SERVER_PID" ] && kill -KILL "$SERVER_PID" 2>/dev/null
  pack
  rm -rf "$WORK"
}
trap cleanup EXIT
record() { "${H[@]}" record "$S" "$1" "$2"; }
step() { "${H[@]}" step "$S" "$@"; }   # NAME RC RESULT_FILE [LOG]
skip() { "${H[@]}" skip "$S" "$1" "$2"; }
elapsed() { echo $((SECONDS - T_START)); }
# time_for NAME SECONDS: true when SECONDS are left before the deadline, else records a skip.
time_for() {
  if [ $(($(elapsed) + $2)) -gt "$DEADLINE_S" ]; then
    skip "$1" "not started: $(elapsed) s spent, needs ~$2 s, deadline $DEADLINE_S s"
    return 1
  fi
}
wanted() { [[ "$SKIP" != *" $1 "* ]]; }

# --- versions ---------------------------------------------------------------------------------
record date "\"$(date -u +%Y-%m-%dT%H:%M:%SZ)\""
record gpu "\"$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -1)\""
nvidia-smi > "$LOGS/nvidia-smi.txt" 2>&1
record spotinfer "\"$(timeout 30 "$BIN" --version 2>&1 | head -1)\""
[ -f "$CARRY/build-info.json" ] && record build "$(cat "$CARRY/build-info.json")" &&
  record commit "\"$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("commit",""))' "$CARRY/build-info.json")\""
git rev-parse HEAD > /dev/null 2>&1 && record tree_commit "\"$(git rev-parse HEAD)\""
record python "$(timeout 120 "$PY" -c '
import json, platform
v = {"python": platform.python_version()}
for m in ["torch", "transformers", "sentence_transformers", "tokenizers"]:
    try:
        v[m] = __import__(m).__version__
    except Exception as e:
        v[m] = "missing: %s" % e
try:
    import torch
    v["torch_cuda"] = torch.version.cuda
    v["torch_gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
except Exception:
    pass
print(json.dumps(v))' 2>/dev/null || echo '{}')"
record settings "{\"device\": \"$DEVICE\", \"lines\": $LINES, \"max_batch_tokens\": $BUDGET, \"deadline_s\": $DEADLINE_S}"
if ! [ -x "$BIN" ] || ! timeout 30 "$BIN" --version > /dev/null 2>&1; then
  echo "fused.sh: $BIN does not run (is $CARRY/spotinfer.xz there? run tests/gpu/prepare.sh)" >&2
  skip binary "the carried binary does not start"
  "${H[@]}" table "$S" | tee "$FINAL/summary.txt"
  exit 1
fi

# --- server helpers ---------------------------------------------------------------------------
# start_server LOG MODEL DTYPE BACKEND extra...: serve in the background, wait for /ready.
start_server() {
  local log=$1 model=$2 dtype=$3 backend=$4; shift 4
  if curl -s -o /dev/null "$URL/health"; then
    echo "port $PORT is in use: a server from an earlier step is still running" >> "$log"
    return 1
  fi
  "$BIN" serve --model-id "$model" --device "$DEVICE" --dtype "$dtype" --gpu-backend "$backend" \
    --hostname 127.0.0.1 --port "$PORT" --prometheus-port 0 --drain-delay 0 --drain-timeout 5 \
    --json-output "$@" >> "$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 900); do   # 90 s: the first start JIT-compiles the PTX (~30 s)
    curl -sf "$URL/ready" > /dev/null 2>&1 && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited" >> "$log"; SERVER_PID=""; return 1; }
    sleep 0.1
  done
  echo "server not ready after 90 s" >> "$log"
  stop_server
  return 1
}
stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  kill -TERM "$SERVER_PID" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$SERVER_PID" 2>/dev/null
  wait "$SERVER_PID" 2>/dev/null
  SERVER_PID=""
}
# gpu_mem_of PID: the process's GPU memory in MiB (nvidia-smi); the only compute app if the
# PID is not listed (a PID namespace), empty if none.
gpu_mem_of() {
  local rows; rows=$(nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits 2>/dev/null)
  local m; m=$(awk -F', *' -v p="$1" '$1==p {print $2}' <<< "$rows")
  if [ -z "$m" ] && [ "$(grep -c . <<< "$rows")" = 1 ]; then m=$(awk -F', *' '{print $2}' <<< "$rows"); fi
  echo "$m"
}
# run_batch NAME MODEL DTYPE BACKEND INPUT OUTPUT TIMEOUT: one offline run, its stats as a step.
run_batch() {
  local name=$1 model=$2 dtype=$3 backend=$4 input=$5 output=$6 limit=$7
  local log=$LOGS/$name.log
  rm -f "$output" "$output.ckpt"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -k 5 "$limit" "$BIN" batch --model-id "$model" --device "$DEVICE" --dtype "$dtype" \
    --gpu-backend "$backend" --input "$input" --output "$output" --max-batch-tokens "$BUDGET" \
    --no-progress --json-output > "$log" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  "${H[@]}" batch-stats "$output" "$log" "$t0" "$t1" > "$LOGS/$name.json" 2> "$LOGS/$name.helper.log"
  step "$name" "$rc" "$LOGS/$name.json" "$log"
}

# --- 1. selftest ------------------------------------------------------------------------------
if wanted selftest; then
  timeout -k 5 200 "$BIN" selftest --device "$DEVICE" --json "$FINAL/selftest.json" \
    > "$LOGS/selftest.log" 2>&1
  rc=$?
  "${H[@]}" selftest-summary "$FINAL/selftest.json" > "$LOGS/selftest-summary.json" 2>> "$LOGS/selftest.log"
  step selftest "$rc" "$LOGS/selftest-summary.json" "$LOGS/selftest.log"
  pack
fi

# --- 2. reference vectors ---------------------------------------------------------------------
MINILM=$CARRY/minilm-f16
if wanted reference; then
  "${H[@]}" minilm-lines tests/fixtures/minilm_reference.json "$WORK/ref.jsonl"
  for backend in fused reference; do
    for dtype in float16 bfloat16; do
      name=minilm-ref-$backend-$dtype
      time_for "$name" 15 || continue
      run_batch "$name-run" "$MINILM" "$dtype" "$backend" "$WORK/ref.jsonl" "$WORK/ref-out.jsonl" 120 > /dev/null
      "${H[@]}" minilm-check tests/fixtures/minilm_reference.json "$WORK/ref-out.jsonl" "$dtype" \
        > "$LOGS/$name.json" 2>> "$LOGS/$name-run.log"
      "${H[@]}" annotate "$LOGS/$name.json" "$LOGS/$name-run.json"   # the backend that ran
      step "$name" 0 "$LOGS/$name.json" "$LOGS/$name-run.log"
    done
  done
  pack
fi

if wanted fixtures; then
  # backend:dtype pairs per fixture; float32 only on the reference backend (fused refuses it).
  FIXTURE_RUNS=${FIXTURE_RUNS:-"reference:float32 reference:float16 fused:float16 reference:bfloat16 fused:bfloat16"}
  for fx in tiny-qwen3 tiny-qwen2 tiny-mistral tiny-llama tiny-gemma3 tiny-qwen3-reranker; do
    extra=()
    [ "$fx" = tiny-qwen3-reranker ] && extra=(--task rerank)
    for run in $FIXTURE_RUNS; do
      backend=${run%%:*} dtype=${run#*:}
      name=$fx-$backend-$dtype
      time_for "$name" 8 || continue
      log=$LOGS/$name.log
      if start_server "$log" "tests/fixtures/$fx" "$dtype" "$backend" "${extra[@]}"; then
        "${H[@]}" fixture-check "$URL" "tests/fixtures/$fx" "$dtype" > "$LOGS/$name.json" \
          2> "$LOGS/$name.helper.log"
        rc=$?
        stop_server
        "${H[@]}" annotate "$LOGS/$name.json" "$log"
        step "$name" "$rc" "$LOGS/$name.json" "$log"
      else
        echo '{"error": "server did not start"}' > "$LOGS/$name.json"
        step "$name" 1 "$LOGS/$name.json" "$log"
      fi
    done
  done
  pack
fi

# --- 3. speed beside the peer -----------------------------------------------------------------
CORPUS=$WORK/corpus.jsonl JOBS=$WORK/jobs.jsonl
speed_model() { # MODEL_NAME DIR DTYPE MAXLEN PEER_BATCH_SIZES
  local m=$1 dir=$2 dtype=$3 maxlen=$4 sizes=$5 b
  for b in fused reference; do
    time_for "speed-$m-$b" 40 || continue
    run_batch "speed-$m-$b" "$dir" "$dtype" "$b" "$JOBS" "$WORK/out-$m-$b.jsonl" 150
  done
  if time_for "peer-$m" 90; then
    timeout -k 5 200 "$PY" tests/gpu/peer_st.py "$dir" "$CORPUS" "$maxlen" --dtype "$dtype" \
      --batch-sizes "$sizes" --device "$PEER_DEVICE" --dump 512 "$WORK/peer-$m.json" \
      > "$LOGS/peer-$m.json" 2> "$LOGS/peer-$m.log"
    step "peer-$m" $? "$LOGS/peer-$m.json" "$LOGS/peer-$m.log"
  fi
  local pair
  local pair x y fa fb
  for pair in "fused reference" "fused peer" "reference peer"; do
    read -r x y <<< "$pair"
    fa=$WORK/out-$m-$x.jsonl fb=$WORK/out-$m-$y.jsonl
    [ "$y" = peer ] && fb=$WORK/peer-$m.json
    [ -s "$fa" ] && [ -s "$fb" ] || continue
    # loose bounds (random-weight deep models in half precision; the figures are what to read)
    "${H[@]}" compare "$fa" "$fb" "$([ "$dtype" = bfloat16 ] && echo 0.98 || echo 0.99)" \
      > "$LOGS/cos-$m-$x-vs-$y.json" 2> "$LOGS/cos-$m-$x-vs-$y.log"
    step "cos-$m-$x-vs-$y" $? "$LOGS/cos-$m-$x-vs-$y.json" "$LOGS/cos-$m-$x-vs-$y.log"
  done
  rm -f "$WORK/out-$m-"*.jsonl "$WORK/peer-$m.json"
  pack
}
QWEN=$WORK/qwen3-0.6b-shape
if wanted speed; then
  corpus_jobs "$LINES" "$CORPUS" "$JOBS"
  record corpus "{\"lines\": $(grep -c . "$JOBS" 2>/dev/null || echo 0)}"
  speed_model minilm "$MINILM" float16 256 32,128,512
  if time_for bert-large-make 30; then
    timeout -k 5 120 "$PY" tests/gpu/make_bert_large.py "$WORK/bert-large" "$MINILM" \
      > "$LOGS/bert-large-make.log" 2>&1
    rc=$?
    if [ $rc = 0 ]; then
      speed_model bert-large "$WORK/bert-large" float16 512 128,512
    else
      echo '{"error": "make_bert_large.py failed"}' > "$LOGS/bert-large-make.json"
      step bert-large-make "$rc" "$LOGS/bert-large-make.json" "$LOGS/bert-large-make.log"
    fi
  fi
fi
if { wanted speed || wanted memory; } && time_for qwen3-make 40; then
  timeout -k 5 180 "$PY" tests/gpu/make_qwen3_shape.py "$QWEN" --layers "${QWEN_LAYERS:-28}" \
    --device "$PEER_DEVICE" > "$LOGS/qwen3-make.json" \
    2> "$LOGS/qwen3-make.log"
  step qwen3-make $? "$LOGS/qwen3-make.json" "$LOGS/qwen3-make.log"
fi
if wanted speed && [ -f "$QWEN/config.json" ]; then
  speed_model qwen3-0.6b-shape "$QWEN" bfloat16 512 128,512
fi

# --- 4. memory: plan vs the serving process ---------------------------------------------------
if wanted memory && [ -f "$QWEN/config.json" ]; then
  timeout -k 5 60 "$BIN" plan --model-id "$QWEN" --device cuda --gpu h100-80gb --dtype bfloat16 \
    --max-batch-tokens "$BUDGET" --output json > "$LOGS/plan-qwen3.json" 2> "$LOGS/plan-qwen3.log"
  record plan_exit_code "$?"
  for b in fused reference; do
    name=memory-qwen3-$b
    time_for "$name" 35 || continue
    log=$LOGS/$name.log
    if start_server "$log" "$QWEN" bfloat16 "$b" --max-batch-tokens "$BUDGET"; then
      timeout -k 5 60 "$BIN" bench --url "$URL" --concurrency 32,128 --corpus-size 2048 \
        --requests 2048 --max-time 8 --json "$LOGS/$name-bench.json" > "$LOGS/$name-bench.txt" 2>&1
      sleep 1
      real=$(gpu_mem_of "$SERVER_PID")
      nvidia-smi --query-compute-apps=pid,used_memory --format=csv > "$LOGS/$name-apps.csv" 2>&1
      "${H[@]}" memory "$LOGS/plan-qwen3.json" "$log" "${real:-null}" > "$LOGS/$name.json" \
        2> "$LOGS/$name.helper.log"
      rc=$?
      [ -z "$real" ] && rc=1
      stop_server
      step "$name" "$rc" "$LOGS/$name.json" "$log"
    else
      echo '{"error": "server did not start"}' > "$LOGS/$name.json"
      step "$name" 1 "$LOGS/$name.json" "$log"
    fi
  done
fi

# --- 4b. HTTP beside the peer, and an absurd token budget ------------------------------------
# HTTP: MiniLM and the BERT-large shape in float16 on both backends, concurrency 1 (short-query
# p50), 32 and 256 (best), bounded by count and time. OOM: the BERT-large shape on the fused
# backend with --max-batch-tokens 4,000,000: the memory cap must lower it, batches that still
# run out of memory split and retry, and the process must survive and keep answering.
http_model() { # NAME DIR
  local m=$1 dir=$2 b name log
  for b in fused reference; do
    name=http-$m-$b
    time_for "$name" 45 || continue
    log=$LOGS/$name.log
    if start_server "$log" "$dir" float16 "$b" --max-batch-tokens "$BUDGET"; then
      timeout -k 5 90 "$BIN" bench --url "$URL" --concurrency 1,32,256 --corpus-size 4096 \
        --requests 4096 --max-time "${HTTP_SECONDS:-5}" --server-pid "$SERVER_PID" \
        --json "$LOGS/$name-bench.json" > "$LOGS/$name-bench.txt" 2>&1
      rc=$?
      "${H[@]}" http-summary "$LOGS/$name-bench.json" "$log" > "$LOGS/$name.json" 2>> "$log"
      stop_server
      step "$name" "$rc" "$LOGS/$name.json" "$log"
    else
      echo '{"error": "server did not start"}' > "$LOGS/$name.json"
      step "$name" 1 "$LOGS/$name.json" "$log"
    fi
  done
}
if wanted http; then
  http_model minilm "$MINILM"
  [ -d "$WORK/bert-large" ] && http_model bert-large "$WORK/bert-large"
  pack
fi
if wanted oom && [ -d "$WORK/bert-large" ] && time_for oom 40; then
  log=$LOGS/oom.log
  if start_server "$log" "$WORK/bert-large" float16 fused --max-batch-tokens 4000000; then
    timeout -k 5 60 "$BIN" bench --url "$URL" --concurrency 256 --corpus-size 4096 \
      --requests 4096 --max-time 8 --json "$LOGS/oom-bench.json" > "$LOGS/oom-bench.txt" 2>&1
    alive=false
    kill -0 "$SERVER_PID" 2>/dev/null && curl -sf "$URL/health" > /dev/null && alive=true
    "${H[@]}" oom-summary "$LOGS/oom-bench.json" "$log" "$alive" > "$LOGS/oom.json" 2>> "$log"
    rc=$?
    stop_server
    step oom "$rc" "$LOGS/oom.json" "$log"
  else
    echo '{"error": "server did not start with --max-batch-tokens 4000000"}' > "$LOGS/oom.json"
    step oom 1 "$LOGS/oom.json" "$log"
  fi
  pack
fi

# --- 5. summary -------------------------------------------------------------------------------
record elapsed_s "$(elapsed)"
"${H[@]}" issue-keys "$S" > /dev/null 2>> "$LOGS/summary.log"   # the keys issue 17 names
"${H[@]}" table "$S" | tee "$FINAL/summary.txt"
cp "$S" "$LOGS/summary.json" 2>/dev/null
pack
