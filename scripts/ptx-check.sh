#!/usr/bin/env bash
# Static check of spotinfer's own CUDA kernels (src/model/cuda/kernels/*.cu), no GPU needed:
# assembles every PTX file build.rs produced with `ptxas -v` for each target architecture,
# prints registers / stack / spills / shared memory per kernel, and FAILS if
#   - a hot kernel spills registers (every entry point of ours is on the hot path: attention,
#     norms, embedding, rope, glu / bias_act, pooling, the non-finite scan),
#   - ptxas rejects a file for an architecture,
#   - a PTX file's ISA version is newer than the GPU driver can JIT (PTX_MAX_VERSION, 9.0 =
#     CUDA 13.0 = driver R580, see docs/CUDA.md),
#   - an entry point's parameter size differs from its #[repr(C)] twin in src/model/cuda/params.rs,
#   - the host emulation fails: src/model/cuda/emu/emu_test.cpp compiles the kernel sources with
#     g++ against a small SIMT emulator (fibers for threads, barriers for __syncthreads / shuffles,
#     mma.sync from the PTX fragment tables) and compares every kernel with a double-precision
#     reference at edge shapes (~1 min on 2 cores; PTX_CHECK_EMULATE=0 skips it).
#
#   scripts/ptx-check.sh                 # PTX from the newest target/cuda release build
#   scripts/ptx-check.sh DIR             # PTX files in DIR
#   PTX_CHECK_ARCHS="90" scripts/ptx-check.sh
#
# ptxas: $PTXAS, else .cuda-wheels/nvidia/cu13/bin/ptxas (scripts/cuda-build.sh installs it),
# else $CUDA_HOME/bin/ptxas, else PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ARCHS=${PTX_CHECK_ARCHS:-"80 86 89 90"}
PTX_MAX_VERSION=${PTX_MAX_VERSION:-9.0}
EXPECTED=(attention norm rope act pool)

die() { echo "ptx-check: error: $*" >&2; exit 1; }

PTXAS=${PTXAS:-}
if [ -z "$PTXAS" ]; then
  for c in .cuda-wheels/nvidia/cu13/bin/ptxas "${CUDA_HOME:-/nonexistent}/bin/ptxas" "$(command -v ptxas || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then PTXAS=$c; break; fi
  done
fi
[ -n "$PTXAS" ] && [ -x "$PTXAS" ] || die "no ptxas found (run scripts/cuda-build.sh --setup-only first, or set PTXAS)"

DIR=${1:-}
if [ -z "$DIR" ]; then
  # The newest build-script output of our crate that holds the kernels (old hash dirs linger).
  DIR=$(ls -dt target/cuda/release/build/spotinfer-*/out 2>/dev/null | while read -r d; do
          [ -f "$d/attention.ptx" ] && { echo "$d"; break; }; done || true)
  [ -n "$DIR" ] || die "no PTX under target/cuda/release/build/spotinfer-*/out (build with scripts/cuda-build.sh first)"
fi
for f in "${EXPECTED[@]}"; do [ -f "$DIR/$f.ptx" ] || die "$DIR/$f.ptx is missing"; done

echo "ptx-check: $PTXAS ($("$PTXAS" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')), PTX from $DIR, archs: $ARCHS"

fail=0
version_le() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }
for f in "${EXPECTED[@]}"; do
  v=$(sed -n 's/^\.version \([0-9.]*\).*/\1/p' "$DIR/$f.ptx" | head -1)
  if ! version_le "$v" "$PTX_MAX_VERSION"; then
    echo "FAIL $f.ptx is PTX ISA $v, newer than $PTX_MAX_VERSION (the GPU driver could not JIT it)"
    fail=1
  fi
done

# The one by-value parameter of every entry point must have the size of its #[repr(C)] twin in
# src/model/cuda/params.rs (read from its `size_of::<X>() == N` assertions).
PARAMS_RS=src/model/cuda/params.rs
declare -A WANT
while read -r name size; do WANT[$name]=$size; done < <(sed -n 's/.*size_of::<\([A-Za-z]*\)>() == \([0-9]*\).*/\1 \2/p' "$PARAMS_RS")
struct_of() {
  case "$1" in
    attn_*) echo AttnParams ;; fused_norm_*) echo NormParams ;; embed_norm_*) echo EmbedParams ;;
    rope_qk_*) echo RopeParams ;; glu_*) echo GluParams ;; bias_act_*) echo BiasActParams ;;
    pool_*) echo PoolParams ;; nonfinite_*) echo ScanParams ;; *) echo "" ;;
  esac
}
for f in "${EXPECTED[@]}"; do
  while read -r entry size; do
    st=$(struct_of "$entry")
    if [ -z "$st" ] || [ -z "${WANT[$st]:-}" ]; then
      echo "FAIL $entry: no parameter struct known for it in $PARAMS_RS"; fail=1
    elif [ "${WANT[$st]}" != "$size" ]; then
      echo "FAIL $entry takes $size parameter bytes, $st in $PARAMS_RS has ${WANT[$st]}"; fail=1
    fi
  done < <(sed -n 's/.*\.param .*\.b8 \([A-Za-z0-9_]*\)_param_0\[\([0-9]*\)\].*/\1 \2/p' "$DIR/$f.ptx")
  if grep -q '_param_1' "$DIR/$f.ptx"; then echo "FAIL $f.ptx: an entry point takes more than one parameter"; fail=1; fi
done

# Field by field: every parameter struct in the .cu files and its twin in params.rs must list the
# same kinds (pointer, i64, i32, u32, f32) in the same order under the same names.
if ! python3 - src/model/cuda/kernels "$PARAMS_RS" <<'PY'
import re, sys, pathlib
kdir, rs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).read_text()
def c_kind(t):
    t = t.strip()
    if t.endswith('*'): return 'ptr'
    return {'long long': 'i64', 'int': 'i32', 'unsigned': 'u32', 'float': 'f32'}.get(t, '?' + t)
c = {}
for f in sorted(kdir.glob('*.cu')):
    for name, body in re.findall(r'struct (\w+Params) \{(.*?)\};', f.read_text(), re.S):
        fields = []
        for line in body.split('\n'):
            line = line.split('//')[0].strip().rstrip(';')
            if not line: continue
            m = re.match(r'((?:const )?[\w ]+?\s*\**)\s*(\w+(?:\s*,\s*\w+)*)$', line)
            if not m: print(f'cannot parse {f.name} {name}: {line}'); sys.exit(1)
            for n in m.group(2).split(','): fields.append((n.strip(), c_kind(m.group(1).replace('const ', ''))))
        c[name] = fields
r = {}
for name, body in re.findall(r'pub\(crate\) struct (\w+Params) \{(.*?)\n\}', rs, re.S):
    r[name] = [(n, {'u64': 'ptr'}.get(t, t)) for n, t in re.findall(r'pub (\w+): (\w+),', body)]
ok = set(c) == set(r) and len(c) > 0
if set(c) != set(r): print(f'structs differ: .cu {sorted(c)} vs params.rs {sorted(r)}')
alias = {'typ': 'type'}
for name in sorted(set(c) & set(r)):
    a, b = c[name], [(alias.get(n, n), k) for n, k in r[name]]
    if a != b:
        ok = False
        print(f'{name}: .cu {a}\n{" " * len(name)}  params.rs {b}')
print(f'{len(c)} parameter structs match field by field' if ok else 'parameter structs differ')
sys.exit(0 if ok else 1)
PY
then fail=1; fi

TABLE=$(mktemp); LOG=$(mktemp); trap 'rm -f "$TABLE" "$LOG"' EXIT
for arch in $ARCHS; do
  for f in "${EXPECTED[@]}"; do
    if ! "$PTXAS" -arch="sm_$arch" -O3 -v "$DIR/$f.ptx" -o /dev/null > "$LOG" 2>&1; then
      echo "FAIL ptxas sm_$arch $f.ptx:"; sed 's/^/    /' "$LOG"; fail=1; continue
    fi
    # ptxas -v prints, per entry:  Compiling entry function 'NAME' for 'sm_XX'
    #   N bytes stack frame, N bytes spill stores, N bytes spill loads
    #   Used N registers, ... N bytes smem ...
    awk -v arch="$arch" -v file="$f" '
      /Compiling entry function/ { match($0, /'\''[^'\'']+'\''/); name = substr($0, RSTART + 1, RLENGTH - 2); stack = st = ld = 0; next }
      name != "" && /bytes stack frame/ { stack = $1; st = $5; ld = $9; next }
      name != "" && /Used [0-9]+ registers/ {
        regs = 0; smem = 0
        for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^registers/) regs = $i; if ($(i+1) == "bytes" && $(i+2) ~ /^smem/) smem = $i }
        printf "%s %s %s %d %d %d %d %d\n", name, arch, file, regs, stack, st, ld, smem; name = "" }
    ' "$LOG" >> "$TABLE"
  done
done

[ -s "$TABLE" ] || die "ptxas reported no entry functions"
HOT='^(attn_|fused_norm_|embed_norm_|rope_|glu_|bias_act_|pool_|nonfinite_)'
printf '%-24s %-10s' kernel file; for a in $ARCHS; do printf ' %-26s' "sm_$a regs/stack/spill/smem"; done; echo
sort -k1,1 -k2,2n "$TABLE" | awk -v archs="$ARCHS" '
  { key = $1; file[key] = $3; cell[key, $2] = sprintf("%3d / %3dB / %d+%dB / %5dB", $4, $5, $6, $7, $8); if (!(key in seen)) { seen[key] = 1; order[++n] = key } }
  END { na = split(archs, A, " "); for (i = 1; i <= n; i++) { k = order[i]; printf "%-24s %-10s", k, file[k]; for (j = 1; j <= na; j++) printf " %-26s", cell[k, A[j]]; printf "\n" } }'

spills=$(awk -v hot="$HOT" '$1 ~ hot && ($6 > 0 || $7 > 0) { printf "  %s sm_%s: %d bytes spill stores, %d bytes spill loads\n", $1, $2, $6, $7 }' "$TABLE")
if [ -n "$spills" ]; then
  echo "FAIL register spills in hot kernels:"; echo "$spills"; fail=1
fi
n=$(awk '{ print $1 }' "$TABLE" | sort -u | wc -l)

if [ "${PTX_CHECK_EMULATE:-1}" = 1 ]; then
  INC="$(dirname "$PTXAS")/../include"
  [ -f "$INC/cuda_fp16.h" ] || INC="${CUDA_HOME:-/nonexistent}/include"
  [ -f "$INC/cuda_fp16.h" ] || die "no CUDA headers next to $PTXAS or in \$CUDA_HOME/include (needed by the emulation)"
  EMU=$(mktemp -d); trap 'rm -rf "$EMU"; rm -f "$TABLE" "$LOG"' EXIT
  # -fno-strict-aliasing: the kernels pun T[8] <-> uint4 like all CUDA code; g++ -O2 would
  # otherwise be entitled to reorder those accesses (nvcc does not).
  if ! ${CXX:-g++} -std=c++20 -O2 -fno-strict-aliasing -Wall -Wextra -Wno-unknown-pragmas -Werror \
       -I "$INC" -o "$EMU/emu_test" src/model/cuda/emu/emu_test.cpp; then
    echo "FAIL the kernel emulation does not compile"; fail=1
  elif ! "$EMU/emu_test" > "$EMU/log" 2>&1; then
    echo "FAIL emulated kernel tests:"; grep -v '^ok ' "$EMU/log" | sed 's/^/    /'; fail=1
  else
    echo "ptx-check: $(tail -1 "$EMU/log")"
  fi
fi
if [ "$fail" = 0 ]; then
  echo "ptx-check: OK ($n kernels x $(echo "$ARCHS" | wc -w) architectures, no spills)"
else
  echo "ptx-check: FAILED"; exit 1
fi
