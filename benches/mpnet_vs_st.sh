#!/usr/bin/env bash
# all-mpnet-base-v2 on spotinfer's native CPU backend (float32) against sentence-transformers,
# measured in the same run on this machine, runs alternating (ours, peer, ours, peer, ...):
#
#   offline: `spotinfer batch` over N corpus texts (OpenAI batch lines; wall time from exec to
#            exit, so model load and writing the output are included) against
#            benches/st_baseline.py (`encode(batch_size=32)` in-process, model load excluded);
#   HTTP:    `spotinfer bench --concurrency 32` against `spotinfer serve` and against
#            benches/st_http_peer.py (sentence-transformers behind a micro-batching HTTP server
#            with the same routes), both already loaded and listening on 127.0.0.1.
#
# Usage: bash benches/mpnet_vs_st.sh [OUT_JSON]       (default docs/bench/mpnet-cpu.json)
# Environment (all optional):
#   SPOTINFER_MPNET_DIR  model folder (else scripts/fetch-mpnet.sh fetches it)
#   SPOTINFER_REF_VENV   the peer's venv (else scripts/make-ref-venv.sh builds it)
#   ROUNDS=2             alternating rounds of each measurement
#   TEXTS=1024           offline corpus texts (the deterministic corpus of `spotinfer bench`)
#   REQUESTS=512         HTTP requests per level and run;  MAX_TIME=120  seconds per level
#   CONCURRENCY=32       HTTP concurrency (comma list allowed)
#   DTYPE=float32        ours: float32, or float16 (FP16 dense layers on AVX512-FP16 CPUs);
#                        the peer always runs float32, its fastest on a CPU
#   SKIP_BUILD=1         use target/release/spotinfer as it is;  KEEP_SCRATCH=1 keeps the logs
# stdout: a markdown summary; the JSON of every run goes to OUT_JSON. Logs on stderr.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
OUT_JSON="${1:-docs/bench/mpnet-cpu.json}"
ROUNDS="${ROUNDS:-2}"
TEXTS="${TEXTS:-1024}"
REQUESTS="${REQUESTS:-512}"
MAX_TIME="${MAX_TIME:-120}"
CONCURRENCY="${CONCURRENCY:-32}"
DTYPE="${DTYPE:-float32}"
log() { echo "mpnet_vs_st: $*" >&2; }

MODEL="$(bash scripts/fetch-mpnet.sh | tail -n1)"
VENV="${SPOTINFER_REF_VENV:-$(bash scripts/make-ref-venv.sh | tail -n1)}"
PY="$VENV/bin/python"
if [[ -z "${SKIP_BUILD:-}" ]]; then
  log "cargo build --release"
  cargo build --release >&2
fi
BIN="$ROOT/target/release/spotinfer"

SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/mpnet-vs-st.XXXXXX")"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [[ -n "${KEEP_SCRATCH:-}" ]]; then log "kept $SCRATCH"; else rm -rf "$SCRATCH"; fi
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ready() { # url, pid, seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    kill -0 "$2" 2>/dev/null || { log "server $1 exited"; return 1; }
    curl -sf -o /dev/null "$1/ready" && return 0
    sleep 0.1
  done
  log "server $1 not ready in $3 s"; return 1
}
now() { date +%s.%N; }

"$BIN" bench --dump-corpus "$SCRATCH/corpus.jsonl" --corpus-size "$TEXTS" 2>/dev/null
"$PY" - "$SCRATCH/corpus.jsonl" "$SCRATCH/job.jsonl" <<'EOF'
import json, sys
with open(sys.argv[2], "w") as out:
    for i, line in enumerate(open(sys.argv[1])):
        out.write(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/embeddings",
                              "body": {"input": json.loads(line)["text"]}}) + "\n")
EOF

COMMIT="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+dirty')"
START="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
RUNS="$SCRATCH/runs.jsonl"
: >"$RUNS"
# Each run's record gets the 1-minute load average read right after it (other jobs share the cores).
record() {
  local line
  line="$("$PY" -c "import json,sys; d=json.loads(sys.argv[1]); d['loadavg_1m_after']=float(open('/proc/loadavg').read().split()[0]); print(json.dumps(d))" "$1")"
  echo "$line" >>"$RUNS"
  log "$(echo "$line" | cut -c1-400)"
}

log "== offline, $ROUNDS alternating rounds over $TEXTS texts"
for ((r = 1; r <= ROUNDS; r++)); do
  # A fresh output each round: the same output again would resume from its checkpoint.
  out="$SCRATCH/out-$r.jsonl"
  t0="$(now)"
  /usr/bin/time -f '%U %S' -o "$SCRATCH/batch.time" "$BIN" batch --no-progress --model-id "$MODEL" --dtype "$DTYPE" --input "$SCRATCH/job.jsonl" \
    --output "$out" 2>"$SCRATCH/batch-$r.log"
  t1="$(now)"
  lines="$(wc -l <"$out")"
  rm -f "$out"
  # Also from "model loaded and warmed up" to "batch complete" in its log: timed as the peer
  # is (its model load is outside its clock).
  after_load="$("$PY" -c "
import re, sys
from datetime import datetime
t = {}
for line in open(sys.argv[1]):
    m = re.match(r'(\S+)Z\s', line)
    for key in ('model loaded and warmed up', 'batch complete'):
        if m and key in line:
            t[key] = datetime.fromisoformat(m.group(1))
a, b = t.get('model loaded and warmed up'), t.get('batch complete')
print((b - a).total_seconds() if a and b else 'None')
" "$SCRATCH/batch-$r.log")"
  record "$("$PY" -c "import json,sys; s=$t1-$t0; a=$after_load; print(json.dumps({'kind':'offline','who':'spotinfer','round':$r,'at':'$(date -u +%H:%M:%SZ)','texts':$TEXTS,'output_lines':$lines,'seconds':s,'cpu_seconds':sum(map(float,open('$SCRATCH/batch.time').read().split()[-2:])),'sentences_per_s':$TEXTS/s,'seconds_after_load':a,'sentences_per_s_after_load':$TEXTS/a if a else None}))")"
  st="$("$PY" benches/st_baseline.py "$MODEL" "$SCRATCH/corpus.jsonl" 2>/dev/null | tail -n1)"
  record "$("$PY" -c "import json,sys; d=json.loads(sys.argv[1]); d.update(kind='offline',who='sentence-transformers',round=$r,at='$(date -u +%H:%M:%SZ)'); print(json.dumps(d))" "$st")"
done

log "== HTTP, concurrency $CONCURRENCY, $ROUNDS alternating rounds of $REQUESTS requests"
OURS_PORT="$(free_port)"
"$BIN" serve --hostname 127.0.0.1 --port "$OURS_PORT" --prometheus-port 0 --model-id "$MODEL" \
  --dtype "$DTYPE" --state-dir "$SCRATCH/state" >/dev/null 2>"$SCRATCH/serve.log" &
OURS_PID=$!
PIDS+=("$OURS_PID")
wait_ready "http://127.0.0.1:$OURS_PORT" "$OURS_PID" 120
PEER_PORT="$(free_port)"
"$PY" benches/st_http_peer.py "$MODEL" "$PEER_PORT" 32 >/dev/null 2>"$SCRATCH/peer.log" &
PEER_PID=$!
PIDS+=("$PEER_PID")
wait_ready "http://127.0.0.1:$PEER_PORT" "$PEER_PID" 300
for ((r = 1; r <= ROUNDS; r++)); do
  for who in spotinfer sentence-transformers; do
    if [[ $who == spotinfer ]]; then port=$OURS_PORT pid=$OURS_PID; else port=$PEER_PORT pid=$PEER_PID; fi
    "$BIN" bench --url "http://127.0.0.1:$port" --concurrency "$CONCURRENCY" \
      --corpus-size "$TEXTS" --requests "$REQUESTS" --max-time "$MAX_TIME" \
      --server-pid "$pid" --json "$SCRATCH/load.json" 2>>"$SCRATCH/bench.log"
    record "$("$PY" -c "import json,sys; d=json.load(open(sys.argv[1])); d.update(kind='http',who='$who',round=$r,at='$(date -u +%H:%M:%SZ)'); print(json.dumps(d))" "$SCRATCH/load.json")"
  done
done

mkdir -p "$(dirname "$OUT_JSON")"
"$PY" - "$RUNS" "$OUT_JSON" "$START" "$COMMIT" "$MODEL" "$TEXTS" "$REQUESTS" "$CONCURRENCY" "$DTYPE" <<'EOF'
import json, platform, re, subprocess, sys
runs_path, out_path, start, commit, model, texts, requests, conc, dtype = sys.argv[1:]
runs = [json.loads(l) for l in open(runs_path)]
cpu = open("/proc/cpuinfo").read()
name = re.search(r"model name\s*:\s*(.*)", cpu).group(1).strip()
flags = set(re.search(r"flags\s*:\s*(.*)", cpu).group(1).split())
isa = {"avx2": "avx2" in flags, "fma": "fma" in flags, "avx512f": "avx512f" in flags,
       "avx512_bf16": "avx512_bf16" in flags, "amx_tile": "amx_tile" in flags,
       "amx_bf16": "amx_bf16" in flags, "avx512_fp16": "avx512_fp16" in flags}
import os
report = {"model": "all-mpnet-base-v2", "model_dir": model, "dtype": dtype, "peer_dtype": "float32",
          "backend": "native CPU", "start_utc": start,
          "end_utc": subprocess.run(["date", "-u", "+%Y-%m-%dT%H:%M:%SZ"], capture_output=True,
                                    text=True).stdout.strip(),
          "commit": commit, "cpu": name, "cores": os.cpu_count(), "isa": isa,
          "kernel": platform.release(), "offline_texts": int(texts),
          "http_requests_per_run": int(requests), "http_concurrency": conc,
          "command": "bash benches/mpnet_vs_st.sh", "runs": runs}
def rate(r):
    return r["sentences_per_s"] if r["kind"] == "offline" else r["levels"][0]["sentences_per_s"]
def cpu_per_sentence(r):
    if r["kind"] == "offline":
        return r.get("cpu_seconds", float("nan")) / r["texts"]
    return r["levels"][0].get("cpu_s_per_request") or float("nan")
def extra(r):
    if r["kind"] == "offline":
        return f"{r['seconds']:.1f} s"
    l = r["levels"][0]
    return f"{l['requests']} req, {l['errors']} err, p50 {l['p50_ms']:.0f} / p99 {l['p99_ms']:.0f} ms"
rows = []
for kind in ("offline", "http"):
    ours = [r for r in runs if r["kind"] == kind and r["who"] == "spotinfer"]
    peer = [r for r in runs if r["kind"] == kind and r["who"] == "sentence-transformers"]
    for o, p in zip(ours, peer):
        after = o.get("sentences_per_s_after_load")
        rows.append({"kind": kind, "round": o["round"], "ours": rate(o), "peer": rate(p),
                     "ratio": rate(o) / rate(p),
                     "ratio_load_excluded": after / rate(p) if after else None,
                     "ours_cpu_s_per_sentence": cpu_per_sentence(o),
                     "peer_cpu_s_per_sentence": cpu_per_sentence(p),
                     "ours_detail": extra(o), "peer_detail": extra(p),
                     "loadavg_after": [o["loadavg_1m_after"], p["loadavg_1m_after"]]})
report["pairs"] = rows
json.dump(report, open(out_path, "w"), indent=2)
print("| measurement | round | spotinfer sent/s | sentence-transformers sent/s | ratio "
      "| ratio, our load excluded as the peer's is "
      "| CPU s/sentence ours / peer | ours | peer | load avg after ours / peer |")
print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- |")
for r in rows:
    what = "offline" if r["kind"] == "offline" else f"HTTP c={conc}"
    excl = f"{r['ratio_load_excluded']:.2f}x" if r["ratio_load_excluded"] else "-"
    print(f"| {what} | {r['round']} | {r['ours']:.2f} | {r['peer']:.2f} | {r['ratio']:.2f}x | {excl} "
          f"| {r['ours_cpu_s_per_sentence']:.3f} / {r['peer_cpu_s_per_sentence']:.3f} "
          f"| {r['ours_detail']} | {r['peer_detail']} "
          f"| {r['loadavg_after'][0]:.2f} / {r['loadavg_after'][1]:.2f} |")
EOF
