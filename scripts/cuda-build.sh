#!/usr/bin/env bash
# Build spotinfer with `--features cuda` on a machine that has no GPU and no CUDA install
# (CI, the 2-core dev box, the Docker build stage). See docs/CUDA.md for the why in full.
#
# Usage:
#   scripts/cuda-build.sh [-v|--verbose] [cargo build args...]   # e.g. --bin spotinfer
#   eval "$(scripts/cuda-build.sh --setup-only)"                  # toolchain + stubs, then print env
#
# Environment (all optional):
#   CUDA_PREFIX        where the CUDA wheels go         (default: <repo>/.cuda-wheels, git-ignored)
#   CUDA_COMPUTE_CAP   GPU arch to compile kernels for  (default: 90 = H100/H200; Docker image: 86)
#   CUDAFORGE_THREADS  parallel nvcc jobs               (default: nproc)
#   VERBOSE=1          same as --verbose: show pip/cargo progress
#
# Needs: python3 + pip, gcc/g++ (nvcc's host compiler), cargo, readelf; network for PyPI/crates.io
# on the first run only. Safe to re-run: every step is skipped when its result is already there.
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Pinned CUDA 13.0 toolkit pieces from PyPI.
# WHY 13.0 and not the newest: the GPU machines run driver R580 = CUDA 13.0. candle loads its
# kernels as PTX (cuModuleLoadData); a driver only JIT-compiles PTX whose ISA it knows, so PTX
# from nvcc 13.1+ fails there with CUDA_ERROR_UNSUPPORTED_PTX_VERSION. 13.0.x is also a version
# cudarc 0.19.10 maps (nvcc "release 13.0" -> its `cuda-13000` bindings).
# WHY every wheel is pinned and installed with --no-deps: nvidia-cuda-nvcc's own requirements are
# unpinned, so pip would otherwise mix in the newest (13.5) nvvm/crt/runtime.
# WHY these wheels: they are the only PyPI packages that ship a full nvcc (cicc, cudafe++,
# ptxas, headers); the cu12/cu11 "nvcc" wheels contain only ptxas.
# ---------------------------------------------------------------------------------------------
CUDA_PINS=(
  nvidia-cuda-nvcc==13.0.88     # nvcc driver, cudafe++, ptxas, fatbinary, nvlink
  nvidia-nvvm==13.0.88          # cicc + libnvvm + libdevice (the CUDA C++ -> PTX compiler)
  nvidia-cuda-crt==13.0.88      # crt/ headers nvcc includes implicitly (host_config.h, ...)
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h + libcudart.so.13 (newest 13.0 patch release)
  nvidia-cuda-cccl==13.0.85     # CUB/Thrust/libcu++ headers (cuda/std/...) used by the kernels
)
CUDA_EXPECT_RELEASE="13.0"      # what `nvcc --version` must report for the pins above
CUDARC_CUDA_VERSION_PIN=13000   # cudarc's spelling of 13.0

SETUP_ONLY=0
VERBOSE=${VERBOSE:-0}
CARGO_ARGS=()
for arg in "$@"; do
  case "$arg" in
    --setup-only) SETUP_ONLY=1 ;;
    -v|--verbose) VERBOSE=1 ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) CARGO_ARGS+=("$arg") ;;   # everything else goes to `cargo build` untouched
  esac
done

# All progress goes to stderr so that --setup-only's stdout is nothing but `export` lines.
log() { if [ "$VERBOSE" = 1 ]; then echo "cuda-build: $*" >&2; fi; }
die() { echo "cuda-build: error: $*" >&2; exit 1; }
# Quiet flags for pip/cargo unless verbose (errors and rustc warnings are still printed).
Q=(--quiet); [ "$VERBOSE" = 1 ] && Q=()

# Run from the crate root whatever the caller's cwd, so relative paths (Cargo.lock,
# target/cuda, the default CUDA_PREFIX) always mean the same thing.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -f Cargo.toml ] || die "no Cargo.toml in $PWD"

# Validate before touching the network: cudaforge wants a bare number (90, 86), not sm_90.
CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
[[ "$CUDA_COMPUTE_CAP" =~ ^[0-9]+$ ]] || die "CUDA_COMPUTE_CAP must be digits like 90 or 86, got '$CUDA_COMPUTE_CAP'"

CUDA_PREFIX=${CUDA_PREFIX:-$PWD/.cuda-wheels}
CUDA_HOME="$CUDA_PREFIX/nvidia/cu13"      # CUDA 13 wheels all install under nvidia/cu13/
STUBS="$CUDA_HOME/lib/stubs"

# ---------------------------------------------------------------------------------------------
# 1. Toolkit wheels. A stamp file records the exact pin list, so changing a pin above
#    reinstalls (--upgrade replaces the old files in --target) and an unchanged one is a no-op.
# ---------------------------------------------------------------------------------------------
STAMP="$CUDA_PREFIX/.cuda-build-pins"
if [ ! -x "$CUDA_HOME/bin/nvcc" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "${CUDA_PINS[*]}" ]; then
  log "installing ${CUDA_PINS[*]} into $CUDA_PREFIX"
  mkdir -p "$CUDA_PREFIX"
  # --only-binary: these exist only as wheels; never let pip try an sdist build.
  python3 -m pip install "${Q[@]}" --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
    --upgrade --target "$CUDA_PREFIX" "${CUDA_PINS[@]}" >&2
  printf '%s' "${CUDA_PINS[*]}" > "$STAMP"
fi

# ---------------------------------------------------------------------------------------------
# 2. Environment for the build scripts.
#    CUDA_HOME/CUDA_PATH/CUDA_ROOT: cudarc's build.rs turns these into -L <dir>/lib and
#      -L <dir>/lib/stubs; cudaforge (candle-kernels) uses them for include paths.
#    PATH: cudarc runs `nvcc --version` to pick its bindings, cudaforge invokes nvcc from PATH.
#    CUDA_COMPUTE_CAP: there is no nvidia-smi to auto-detect from; cudaforge turns 90 into
#      sm_90a (H100/H200 only) and 86 into sm_86. One build per target architecture.
#    CUDAFORGE_THREADS: cudaforge defaults to half the cores (= 1 nvcc on a 2-core box).
#    CUDARC_CUDA_VERSION: makes cudarc's binding choice explicit instead of parsing nvcc output,
#      so a different nvcc earlier on someone's PATH cannot silently change the API level.
# ---------------------------------------------------------------------------------------------
export CUDA_HOME CUDA_PATH="$CUDA_HOME" CUDA_ROOT="$CUDA_HOME"
case ":$PATH:" in *":$CUDA_HOME/bin:"*) ;; *) export PATH="$CUDA_HOME/bin:$PATH" ;; esac
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-$(nproc)}
export CUDARC_CUDA_VERSION=$CUDARC_CUDA_VERSION_PIN

# Fail early and clearly if the nvcc we will use is not the pinned release (a 13.1+ nvcc would
# build fine here and only break at run time on the R580 GPU machines).
NVCC_RELEASE=$(nvcc --version | sed -n 's/.*release \([0-9.]*\),.*/\1/p')
[ "$NVCC_RELEASE" = "$CUDA_EXPECT_RELEASE" ] ||
  die "nvcc at $(command -v nvcc) reports release '$NVCC_RELEASE', expected $CUDA_EXPECT_RELEASE"

# ---------------------------------------------------------------------------------------------
# 3. libcudart.so: the wheel ships only libcudart.so.13, but candle-kernels emits `-lcudart`,
#    which the linker resolves through the unversioned name only.
# ---------------------------------------------------------------------------------------------
[ -e "$CUDA_HOME/lib/libcudart.so" ] || ln -sfn libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"

# ---------------------------------------------------------------------------------------------
# 4. Link-only stub libraries.
#    WHY: candle-core turns on cudarc's `dynamic-linking` feature (we cannot switch it to
#    dynamic-loading from downstream: cudarc's build.rs panics if both are on), so the final link
#    needs -lcuda -lnvrtc -lcurand -lcublas -lcublasLt. libcuda.so is the driver and is in no
#    wheel; the real cuBLAS wheel is ~580 MB. Stubs with the same SONAMEs and the exact symbol
#    names cudarc declares (taken from cudarc's own generated sys bindings) satisfy the linker,
#    and the binary records only the SONAMEs (DT_NEEDED), which the real libraries provide on a
#    GPU machine. The stubs are for LINKING ONLY: every driver call returns 100
#    (CUDA_ERROR_NO_DEVICE), the others return 0, so they must never be on a GPU machine's
#    LD_LIBRARY_PATH (a stub libcuda.so.1 would shadow the real driver).
#    nvml-wrapper needs nothing here: nvml-wrapper-sys has no build script and no link
#    attributes; it dlopen()s libnvidia-ml.so.1 via libloading when Nvml::init() is called.
# ---------------------------------------------------------------------------------------------
# cargo fetch makes sure the cudarc sources (whose bindings we read) are unpacked locally.
cargo fetch "${Q[@]}"
CUDARC_VER=$(awk '$0 == "name = \"cudarc\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
[ -n "$CUDARC_VER" ] || die "cudarc not found in Cargo.lock (is the cuda feature wired to candle?)"
CUDARC_SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$CUDARC_VER" 2>/dev/null | head -1)
[ -d "$CUDARC_SRC" ] || die "cudarc-$CUDARC_VER sources not found under ${CARGO_HOME:-$HOME/.cargo}/registry/src"

# soname : return value : cudarc module whose sys/mod.rs lists the functions
STUB_SPECS=(
  "libcuda.so.1:100:driver"        # 100 = CUDA_ERROR_NO_DEVICE for every driver call
  "libnvrtc.so.13:0:nvrtc"
  "libcurand.so.10:0:curand"       # cuRAND keeps SONAME .so.10 in CUDA 13
  "libcublas.so.13:0:cublas"
  "libcublasLt.so.13:0:cublaslt"
)
STUB_STAMP="$STUBS/.cudarc-version"
if [ "$(cat "$STUB_STAMP" 2>/dev/null)" != "$CUDARC_VER" ]; then
  log "generating link stubs from cudarc-$CUDARC_VER into $STUBS"
  mkdir -p "$STUBS"
  for spec in "${STUB_SPECS[@]}"; do
    IFS=: read -r so ret mod <<< "$spec"
    base=${so%%.so*}
    # Every `pub unsafe fn NAME` in the sys bindings is an `extern "C" fn NAME` under
    # dynamic-linking (no link_name renames), so NAME is exactly the symbol the linker wants.
    grep -oh '^pub unsafe fn [A-Za-z0-9_]\+' "$CUDARC_SRC/src/$mod/sys/mod.rs" | awk '{print $4}' |
      sort -u | sed "s/.*/int &(void) { return $ret; }/" > "$STUBS/$base.stub.c"
    gcc -shared -fPIC -O0 -Wl,-soname,"$so" -o "$STUBS/$so" "$STUBS/$base.stub.c"
    ln -sfn "$so" "$STUBS/$base.so"     # the linker's -l<name> looks for the unversioned name
  done
  printf '%s' "$CUDARC_VER" > "$STUB_STAMP"
fi

if [ "$SETUP_ONLY" = 1 ]; then
  # Print the environment as shell code for `eval` (a Dockerfile RUN line or a dev shell).
  # PATH is printed as a prefix so the caller's own PATH is kept.
  printf 'export CUDA_HOME=%q CUDA_PATH=%q CUDA_ROOT=%q\n' "$CUDA_HOME" "$CUDA_HOME" "$CUDA_HOME"
  printf 'export PATH=%q:"$PATH"\n' "$CUDA_HOME/bin"
  printf 'export CUDA_COMPUTE_CAP=%q CUDAFORGE_THREADS=%q CUDARC_CUDA_VERSION=%q\n' \
    "$CUDA_COMPUTE_CAP" "$CUDAFORGE_THREADS" "$CUDARC_CUDA_VERSION"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
# 5. Build. Separate target dir: toggling the cuda feature in target/ would rebuild candle and
#    its kernels (~10 min) every time someone switches between cpu and cuda builds.
#    JSON messages on stdout let us find the produced executables without guessing names;
#    rustc diagnostics are still rendered to stderr.
# ---------------------------------------------------------------------------------------------
log "cargo build --release --features cuda --target-dir target/cuda ${CARGO_ARGS[*]:-} (sm_$CUDA_COMPUTE_CAP, $CUDAFORGE_THREADS nvcc jobs)"
START=$SECONDS
BUILD_JSON=$(mktemp); trap 'rm -f "$BUILD_JSON"' EXIT
cargo build "${Q[@]}" --release --features cuda --target-dir target/cuda \
  --message-format=json-render-diagnostics "${CARGO_ARGS[@]}" > "$BUILD_JSON"
ELAPSED=$((SECONDS - START))

# ---------------------------------------------------------------------------------------------
# 6. Report what was built and what it will need from the loader at run time.
# ---------------------------------------------------------------------------------------------
mapfile -t BINS < <(grep -o '"executable":"[^"]*"' "$BUILD_JSON" | sed 's/^"executable":"//; s/"$//' | sort -u)
echo "cuda-build: built in $((ELAPSED / 60))m$((ELAPSED % 60))s (CUDA $NVCC_RELEASE, sm_$CUDA_COMPUTE_CAP)" >&2
[ "${#BINS[@]}" -gt 0 ] || echo "cuda-build: no executable produced (library-only build?)" >&2
for bin in "${BINS[@]}"; do
  echo "$bin"
  readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  NEEDED \1/p'
done
echo "cuda-build: on a GPU machine put the REAL libcudart/libcublas(+Lt)/libcurand on the loader path" \
     "(see docs/CUDA.md), never $STUBS" >&2
