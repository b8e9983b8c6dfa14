#!/usr/bin/env bash
# Where the GPU time goes in `spotinfer batch` on a BERT-large-shaped model (FP16): Nsight Compute
# times every kernel (gpu__time_duration only, clocks left alone), and the table groups them by
# kernel name. Run on the GPU machine with the same carry as tests/gpu/run.sh.
#   CARRY=.carry LINES=512 bash tests/gpu/profile-kernels.sh
set -uo pipefail
. "$(dirname "$0")/common.sh"
NCU=${NCU:-$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)}
LARGE=$WORK/bert-large-random
"$PY" tests/gpu/make_bert_large.py "$LARGE" "$CARRY/minilm-f16"
corpus_jobs "${LINES:-512}" "$WORK/corpus.jsonl" "$WORK/jobs.jsonl"
# Fill the driver's JIT cache first, so the profiled run is the steady state.
"$BIN" batch --model-id "$LARGE" --dtype float16 --input "$WORK/jobs.jsonl" --output "$WORK/o1.jsonl" \
  --no-progress > "$FINAL/warm.log" 2>&1
echo "warm run: $(grep -o 'lines_per_second[^ ]*' "$FINAL/warm.log")"
timeout "${NCU_SECONDS:-180}" "$NCU" --clock-control none --metrics gpu__time_duration.sum --launch-count "${KERNELS:-2500}" --csv --log-file "$FINAL/ncu.csv" \
  "$BIN" batch --model-id "$LARGE" --dtype float16 --input "$WORK/jobs.jsonl" \
  --output "$WORK/o2.jsonl" --no-progress > "$FINAL/ncu-run.log" 2>&1
echo "ncu exit $?"
"$PY" - "$FINAL/ncu.csv" <<'PYEOF' | tee "$FINAL/kernels.txt"
import csv, collections, sys
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
head, body = rows[0], rows[1:]
ki, mi, vi, ui = head.index("Kernel Name"), head.index("Metric Name"), head.index("Metric Value"), head.index("Metric Unit")
tot, cnt = collections.Counter(), collections.Counter()
for r in body:
    if r[mi] != "gpu__time_duration.sum":
        continue
    v = float(r[vi].replace(",", ""))
    v *= {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}[r[ui]]
    name = r[ki].split("(")[0][:90]
    tot[name] += v
    cnt[name] += 1
all_us = sum(tot.values())
print(f"kernels: {sum(cnt.values())}, GPU time {all_us/1e3:.1f} ms")
for name, us in tot.most_common(25):
    print(f"{100*us/all_us:6.2f} %  {us/1e3:9.2f} ms  {cnt[name]:6d}x  {name}")
PYEOF
