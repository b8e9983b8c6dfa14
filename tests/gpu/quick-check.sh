#!/usr/bin/env bash
# A short GPU check after a change to the CUDA path (fits the end of a lease; tests/gpu/run.sh is
# the full one): all-MiniLM-L6-v2 in FP16 through `spotinfer batch` against the committed
# reference vectors (30 texts of mixed lengths, so padded attention buckets), then offline
# throughput of the BERT-large shape over 16,384 generated lines.
#   CARRY=.carry bash tests/gpu/quick-check.sh
set -uo pipefail
. "$(dirname "$0")/common.sh"

# 1. reference vectors (cosine against sentence-transformers' mean pooling)
"$PY" - tests/fixtures/minilm_reference.json "$WORK/ref.jsonl" <<'PYEOF'
import json, sys
with open(sys.argv[2], "w") as out:
    for item in json.load(open(sys.argv[1]))["items"]:
        out.write(json.dumps({"custom_id": item["id"], "method": "POST",
                              "url": "/v1/embeddings", "body": {"input": item["text"]}}) + "\n")
PYEOF
"$BIN" batch --model-id "$CARRY/minilm-f16" --dtype "${DTYPE:-float16}" --input "$WORK/ref.jsonl" \
  --output "$WORK/ref-out.jsonl" --no-progress > "$FINAL/reference.log" 2>&1
"$PY" - tests/fixtures/minilm_reference.json "$WORK/ref-out.jsonl" <<'PYEOF' | tee "$FINAL/reference-check.json"
import json, math, sys
want = {i["id"]: i["mean"] for i in json.load(open(sys.argv[1]))["items"]}
worst, n = 1.0, 0
for line in open(sys.argv[2]):
    r = json.loads(line)
    g, w = r["response"]["body"]["data"][0]["embedding"], want[r["custom_id"]]
    cos = sum(a * b for a, b in zip(g, w)) / math.sqrt(sum(a * a for a in g) * sum(b * b for b in w))
    worst, n = min(worst, cos), n + 1
print(json.dumps({"items": n, "min_cosine": worst, "pass": n == len(want) and worst >= 0.999}))
PYEOF

# 2. offline throughput, BERT-large shape
LARGE=$WORK/bert-large-random
"$PY" tests/gpu/make_bert_large.py "$LARGE" "$CARRY/minilm-f16" > /dev/null 2>&1
corpus_jobs "${LINES:-16384}" "$WORK/corpus.jsonl" "$WORK/jobs.jsonl"
for run in 1 2; do
  rm -f "$WORK/out.jsonl" "$WORK/out.jsonl.ckpt"
  "$BIN" batch --model-id "$LARGE" --dtype "${DTYPE:-float16}" --input "$WORK/jobs.jsonl" \
    --output "$WORK/out.jsonl" --no-progress > "$FINAL/bert-large-$run.log" 2>&1
  echo "bert-large offline run $run: $(grep -o 'load_ms[^ ]*' "$FINAL/bert-large-$run.log" | head -1)" \
    "$(grep -o 'seconds[^ ]*\|lines_per_second[^ ]*' "$FINAL/bert-large-$run.log" | tr '\n' ' ')" \
    "ok lines: $(grep -c '"status_code":200' "$WORK/out.jsonl")" | tee -a "$FINAL/offline.txt"
done
