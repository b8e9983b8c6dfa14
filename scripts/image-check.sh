#!/usr/bin/env bash
# Build spotinfer's two images from their Dockerfiles and run them, with no registry and no
# Docker engine (CI calls this after the tests):
#   1. Debian bookworm from the Debian archive (mmdebstrap), imported as debian:bookworm and
#      debian:bookworm-slim, the only base images the Dockerfiles name;
#   2. the CPU image (Dockerfile): built with buildah, then started as uid 10001 with a read-only
#      root filesystem, serving the test model mounted read-only: /ready turns 200, the image's
#      HEALTHCHECK passes, POST /embed
#      equals the host binary's vector, `podman stop` drains and the container exits 0;
#   3. the CUDA image (Dockerfile.cuda, CUDA_COMPUTE_CAP=90): built with buildah (its build stage
#      is the CUDA compile check), scripts/ptx-check.sh inside that build stage, and the image
#      answers --version with the driver's link stub mounted in place of libcuda.so.1.
# Prints each step's time and each image's size. Needs root and Debian's apt (installs
# mmdebstrap, buildah, podman, runc when missing).
#
#   scripts/image-check.sh               # everything
#   scripts/image-check.sh cpu           # steps 1-2
#   scripts/image-check.sh cuda          # steps 1 and 3
#
# Environment: IMAGE_WORK (podman's storage and scratch; default target/images), HOST_BIN (the
# host build to compare vectors with; default target/debug/spotinfer), MODEL_DIR (default: the
# test model from scripts/fetch-test-model.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

WHAT=${1:-all}
WORK=${IMAGE_WORK:-$PWD/target/images}
HOST_BIN=${HOST_BIN:-$PWD/target/debug/spotinfer}
CPU_TAG=localhost/spotinfer:ci-cpu
CUDA_TAG=localhost/spotinfer:ci-cuda
CUDA_BUILDER_TAG=localhost/spotinfer:ci-cuda-builder

log() { echo "image-check: $*" >&2; }
die() { echo "image-check: error: $*" >&2; exit 1; }
now() { date +%s; }
took() { echo "$(( $(now) - $1 )) s"; }

# --- tools ------------------------------------------------------------------------------------
need=()
for c in mmdebstrap buildah podman runc; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || die "install ${need[*]} (Debian packages)"
  log "installing mmdebstrap buildah podman runc fuse-overlayfs uidmap"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    mmdebstrap buildah podman runc fuse-overlayfs slirp4netns uidmap >&2
fi

# podman and buildah settings of our own, under $WORK: runc (crun refuses hybrid cgroup
# hosts), ulimits under the host's hard limits (podman's default nofile of 1048576 fails where
# the hard limit is lower), storage on the native overlay driver.
mkdir -p "$WORK/tmp"
cat > "$WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=16384:16384", "nproc=8192:8192"]
[engine]
runtime = "runc"
CONF
cat > "$WORK/storage.conf" <<CONF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
CONF
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf TMPDIR=$WORK/tmp
export BUILDAH_LAYERS=true

# --- 1. base images ---------------------------------------------------------------------------
if ! podman image exists docker.io/library/debian:bookworm-slim \
   || ! podman image exists docker.io/library/debian:bookworm; then
  t=$(now)
  rm -f "$WORK/bookworm.tar"
  mmdebstrap --quiet --variant=minbase --mode=root bookworm "$WORK/bookworm.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main" >&2
  # One minbase root under both names: the build stages install what they need with apt.
  podman import --quiet "$WORK/bookworm.tar" docker.io/library/debian:bookworm-slim >/dev/null
  podman tag docker.io/library/debian:bookworm-slim docker.io/library/debian:bookworm
  rm -f "$WORK/bookworm.tar"
  log "base images debian:bookworm and debian:bookworm-slim from the Debian archive: $(took "$t")"
fi

# A build context without target/ and the wheels (.dockerignore), and the host's CA bundle as a
# build secret: where the registries sit behind a TLS-intercepting proxy (as on CI machines) the
# build's cargo and pip need it; elsewhere it is the public roots and changes nothing.
SECRET=()
[ -s /etc/ssl/certs/ca-certificates.crt ] && SECRET=(--secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt)
build() {  # build TAG DOCKERFILE [buildah args...]
  local tag=$1 file=$2 t; shift 2
  t=$(now)
  buildah bud --quiet --format docker --pull=never --layers "${SECRET[@]}" -f "$file" -t "$tag" "$@" . >&2 \
    || die "buildah bud -f $file failed"
  log "built $tag from $file in $(took "$t"); size $(podman image inspect --format '{{.Size}}' "$tag" | awk '{ printf "%.0f MB", $1 / 1e6 }')"
}

# --- 2. the CPU image -------------------------------------------------------------------------
cpu() {
  local model=${MODEL_DIR:-}
  [ -n "$model" ] || model=$(bash scripts/fetch-test-model.sh | tail -n1)
  [ -x "$HOST_BIN" ] || die "no host build at $HOST_BIN to compare with (cargo build first)"
  build "$CPU_TAG" Dockerfile

  local name=spotinfer-image-check-cpu host_log=$WORK/host.log t ready api host_pid
  podman rm -f "$name" >/dev/null 2>&1 || true
  t=$(now)
  # As Kubernetes runs it (deploy/base): uid 10001, read-only root, /data a volume, loopback only.
  # --health-interval disable: no systemd timer for the HEALTHCHECK (run once below instead).
  podman run -d --name "$name" --user 10001:10001 --read-only --health-interval disable \
    -p 127.0.0.1::3000 -p 127.0.0.1::9000 -v "$model:/models/minilm:ro" \
    "$CPU_TAG" --model-id /models/minilm >/dev/null
  api=$(podman port "$name" 3000/tcp | head -n1)
  [ -n "$api" ] || die "no host port for the container's 3000"
  for _ in $(seq 1 240); do
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] \
      || { podman logs "$name" >&2; die "the CPU container exited before /ready"; }
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$api/ready")" = 200 ]; then ready=1; break; fi
    sleep 0.5
  done
  [ -n "${ready:-}" ] || { podman logs "$name" >&2; die "/ready never turned 200"; }
  log "CPU container ready in $(took "$t") (/ready 200 at http://$api)"
  [ "$(podman exec "$name" sh -c 'id -u')" = 10001 ] || die "the server does not run as uid 10001"
  podman healthcheck run "$name" >/dev/null || die "the image's HEALTHCHECK fails on a ready server"
  if podman exec "$name" sh -c 'touch /usr/local/bin/x' 2>/dev/null; then die "the root filesystem is writable"; fi

  # The same request to the host build of this commit.
  "$HOST_BIN" serve --model-id "$model" --hostname 127.0.0.1 --port 0 --prometheus-port 0 \
    --state-dir "$WORK/host-state" 2> "$host_log" &
  host_pid=$!
  local host_api=""
  for _ in $(seq 1 240); do
    host_api=$(sed -n 's/.*listening on \([^ ]*\).*/\1/p' "$host_log" | head -n1)
    [ -n "$host_api" ] && break
    kill -0 "$host_pid" 2>/dev/null || { cat "$host_log" >&2; die "the host binary exited"; }
    sleep 0.5
  done
  [ -n "$host_api" ] || die "the host binary never reported its address"
  host_api=${host_api#http://}
  for _ in $(seq 1 240); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$host_api/ready")" = 200 ] && break
    sleep 0.5
  done
  local body='{"inputs":["Spot capacity is cheap until it is taken back.","A second, longer sentence about retrieval pipelines and their rerankers."]}'
  curl -sf -H 'content-type: application/json' -d "$body" "http://$api/embed" > "$WORK/image.json" \
    || die "POST /embed to the container failed"
  curl -sf -H 'content-type: application/json' -d "$body" "http://$host_api/embed" > "$WORK/host.json" \
    || die "POST /embed to the host binary failed"
  kill -TERM "$host_pid"; wait "$host_pid" || true
  python3 - "$WORK/image.json" "$WORK/host.json" >&2 <<'PY' || die "the image's vectors differ from the host binary's"
import json, math, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
assert len(a) == len(b) == 2 and all(len(x) == 384 for x in a + b), "two 384-dim vectors each"
worst = max(abs(x - y) for u, v in zip(a, b) for x, y in zip(u, v))
cos = min(sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))
          for u, v in zip(a, b))
print(f"image-check: POST /embed image vs host: largest difference {worst:.3g}, lowest cosine {cos:.9f}")
assert worst <= 1e-5, worst
PY

  t=$(now)
  podman stop --time 30 "$name" >/dev/null
  local code
  code=$(podman inspect --format '{{.State.ExitCode}}' "$name")
  podman logs "$name" 2>&1 | tail -n 4 >&2
  [ "$code" = 0 ] || die "the container exited $code after SIGTERM (want 0: drained)"
  log "podman stop: drained and exited 0 in $(took "$t") (grace 30 s)"
  podman rm "$name" >/dev/null
}

# --- 3. the CUDA image ------------------------------------------------------------------------
cuda() {
  build "$CUDA_TAG" Dockerfile.cuda --build-arg CUDA_COMPUTE_CAP=90
  # The build stage, from the layers just built (no work): the PTX it compiled, checked with
  # ptxas and the host SIMT emulator.
  build "$CUDA_BUILDER_TAG" Dockerfile.cuda --build-arg CUDA_COMPUTE_CAP=90 --target builder
  local t
  t=$(now)
  podman run --rm -v "$PWD/scripts/ptx-check.sh:/src/scripts/ptx-check.sh:ro" "$CUDA_BUILDER_TAG" \
    bash scripts/ptx-check.sh >&2 || die "ptx-check in the CUDA build stage failed"
  log "ptx-check in the build stage: $(took "$t")"

  # Every library the binary needs is in the image but the driver; the link stub of the
  # driver (from the build stage) stands in for it to prove the binary starts.
  local missing stub=$WORK/libcuda.so.1 id
  missing=$(podman run --rm --entrypoint ldd "$CUDA_TAG" /usr/local/bin/spotinfer | awk '/not found/ { print $1 }')
  [ "$missing" = libcuda.so.1 ] || die "libraries missing from the CUDA image: ${missing:-none, not even the driver?}"
  id=$(podman create "$CUDA_BUILDER_TAG" true)
  podman cp "$id:/src/.cuda-wheels/nvidia/cu13/lib/stubs/libcuda.so.1" "$stub"
  podman rm "$id" >/dev/null
  local version
  version=$(podman run --rm --read-only --entrypoint /usr/local/bin/spotinfer \
    -v "$stub:/usr/local/nvidia/lib64/libcuda.so.1:ro" "$CUDA_TAG" --version)
  [ "$version" = "spotinfer $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)" ] \
    || die "the CUDA image answered '$version' to --version"
  log "CUDA image: '$version' (driver stub in place of libcuda.so.1; libraries it links: $(podman run --rm --entrypoint ls "$CUDA_TAG" /opt/spotinfer/lib | tr '\n' ' '))"
}

case "$WHAT" in
  base) ;;
  cpu) cpu ;;
  cuda) cuda ;;
  all) cpu; cuda ;;
  *) die "unknown step '$WHAT' (all, base, cpu, cuda)" ;;
esac
