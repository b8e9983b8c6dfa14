#!/usr/bin/env python3
"""Check that deploy/ sets its images and the Karpenter cluster name in one place each.
Called by scripts/validate-deploy.sh with the venv's Python (PyYAML).

  1. the overlays as shipped: every container and initContainer of every workload uses one of
     the two images named in deploy/components/images (no placeholder is left);
  2. a copy of deploy/ whose components/images names registry.test/x/spotinfer:9.9.9-cpu and
     :9.9.9-cuda13.0-sm86 and whose Karpenter clusterName is test-cluster-1, nothing else
     changed: every overlay renders, every container of every workload uses one of the changed
     images, pods that request a GPU use the CUDA image and pods that do not the CPU image, the
     spot overlay has the intake Deployment (CPU image) and a GPU Deployment (CUDA image), and
     its EC2NodeClass carries the changed cluster name everywhere (no CLUSTER_NAME left).

usage: check_deploy_images.py --kubectl KUBECTL --deploy DEPLOY_DIR --work DIR
Exit status 1 on any failure.
"""

import argparse
import os
import shutil
import subprocess
import sys

import yaml

IMAGES = "components/images/kustomization.yaml"
KARPENTER = "overlays/spot/karpenter/kustomization.yaml"
CPU, CUDA = "spotinfer-cpu", "spotinfer-cuda"  # the placeholders the manifests use
TEST = {CPU: ("registry.test/x/spotinfer", "9.9.9-cpu"),
        CUDA: ("registry.test/x/spotinfer", "9.9.9-cuda13.0-sm86")}
TEST_CLUSTER = "test-cluster-1"
INTAKE = "spotinfer-intake"


class Failed(Exception):
    pass


def load(path):
    with open(path) as f:
        return yaml.safe_load(f)


def dump(path, doc):
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)


def images_of(deploy):
    """placeholder -> full image, as components/images sets it."""
    entries = {e["name"]: e for e in load(os.path.join(deploy, IMAGES)).get("images", [])}
    out = {}
    for placeholder in (CPU, CUDA):
        e = entries.get(placeholder)
        if not e or "newName" not in e or "newTag" not in e:
            raise Failed(f"{IMAGES}: no newName and newTag for {placeholder}")
        out[placeholder] = f"{e['newName']}:{e['newTag']}"
    return out


def pod_spec(doc):
    kind = doc.get("kind")
    spec = doc.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind == "CronJob":
        return spec.get("jobTemplate", {}).get("spec", {}).get("template", {}).get("spec")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job",
                "ReplicationController"):
        return spec.get("template", {}).get("spec")
    return None


def requests_gpu(container):
    res = container.get("resources") or {}
    return any("nvidia.com/gpu" in (res.get(k) or {}) for k in ("requests", "limits"))


def check_render(kubectl, overlay, images, label):
    """Render one overlay; check every workload's images. Returns the rendered docs."""
    r = subprocess.run([kubectl, "kustomize", overlay], capture_output=True, text=True)
    if r.returncode != 0:
        raise Failed(f"{label}: kubectl kustomize failed:\n{r.stderr}")
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    workloads = 0
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        workloads += 1
        name = f"{label}: {doc['kind']} {doc['metadata']['name']}"
        containers = spec.get("initContainers", []) + spec.get("containers", [])
        if not containers:
            raise Failed(f"{name}: no containers")
        gpu = any(requests_gpu(c) for c in containers)
        want = images[CUDA] if gpu else images[CPU]
        for c in containers:
            if c.get("image") not in images.values():
                raise Failed(f"{name}: container {c['name']} uses {c.get('image')!r}, not one of "
                             f"{sorted(images.values())} set in {IMAGES}")
            if c["image"] != want:
                raise Failed(f"{name}: container {c['name']} uses {c['image']}, but the pod "
                             f"{'requests' if gpu else 'does not request'} a GPU: want {want}")
        if doc["metadata"]["name"] == INTAKE and want != images[CPU]:
            raise Failed(f"{name}: the intake pod must use the CPU image {images[CPU]}")
        print(f"ok   {name}: {', '.join(c['image'] for c in containers)}"
              f" ({'GPU: CUDA' if gpu else 'no GPU: CPU'} image)")
    if not workloads:
        raise Failed(f"{label}: no workloads rendered")
    return docs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kubectl", required=True)
    ap.add_argument("--deploy", required=True)
    ap.add_argument("--work", required=True)
    args = ap.parse_args()
    overlays = sorted(d for d in os.listdir(os.path.join(args.deploy, "overlays"))
                      if os.path.isfile(os.path.join(args.deploy, "overlays", d,
                                                     "kustomization.yaml")))
    try:
        # 1. as shipped
        shipped = images_of(args.deploy)
        for o in overlays:
            check_render(args.kubectl, os.path.join(args.deploy, "overlays", o), shipped,
                         f"overlays/{o}")

        # 2. a copy with the one image place and the one cluster name changed
        copy = os.path.join(args.work, "deploy")
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(args.deploy, copy)
        comp = load(os.path.join(copy, IMAGES))
        for e in comp["images"]:
            if e["name"] in TEST:
                e["newName"], e["newTag"] = TEST[e["name"]]
        dump(os.path.join(copy, IMAGES), comp)
        changed = images_of(copy)
        if changed != {k: f"{n}:{t}" for k, (n, t) in TEST.items()}:
            raise Failed(f"could not change the images in the copy of {IMAGES}")
        kust = load(os.path.join(copy, KARPENTER))
        n = 0
        for g in kust.get("configMapGenerator", []):
            lits = g.get("literals", [])
            for i, lit in enumerate(lits):
                if lit.startswith("clusterName="):
                    lits[i] = f"clusterName={TEST_CLUSTER}"
                    n += 1
        if n != 1:
            raise Failed(f"{KARPENTER}: want exactly one clusterName= literal, found {n}")
        dump(os.path.join(copy, KARPENTER), kust)

        print(f"--   a copy of deploy/ with {IMAGES} set to {changed[CPU]} and {changed[CUDA]}, "
              f"clusterName {TEST_CLUSTER}")
        for o in overlays:
            docs = check_render(args.kubectl, os.path.join(copy, "overlays", o), changed,
                                f"overlays/{o} (changed)")
            if o != "spot":
                continue
            by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
            intake = by.get(("Deployment", INTAKE))
            if intake is None:
                raise Failed(f"overlays/spot (changed): no Deployment {INTAKE}")
            gpu = [d for d in docs if d["kind"] == "Deployment"
                   and any(requests_gpu(c) for c in pod_spec(d)["containers"])]
            if not gpu:
                raise Failed("overlays/spot (changed): no GPU Deployment")
            # Karpenter's cluster name: the one value reaches every field that needs it.
            ncs = [d for d in docs if d["kind"] == "EC2NodeClass"]
            if not ncs:
                raise Failed("overlays/spot (changed): no EC2NodeClass")
            for nc in ncs:
                label = f"overlays/spot (changed): EC2NodeClass {nc['metadata']['name']}"
                text = yaml.safe_dump(nc)
                if "CLUSTER_NAME" in text:
                    raise Failed(f"{label} still has CLUSTER_NAME:\n{text}")
                s = nc["spec"]
                got = [s.get("role")] + [t.get("tags", {}).get("karpenter.sh/discovery")
                                         for k in ("subnetSelectorTerms",
                                                   "securityGroupSelectorTerms")
                                         for t in s.get(k, [])]
                want = [f"KarpenterNodeRole-{TEST_CLUSTER}"] + [TEST_CLUSTER] * (len(got) - 1)
                if got != want or len(got) < 3:
                    raise Failed(f"{label}: role and discovery tags {got}, want {want}")
                print(f"ok   {label}: role {s['role']}, {len(got) - 1} discovery tags "
                      f"{TEST_CLUSTER}")
            if ("ConfigMap", "karpenter-cluster") in by:
                raise Failed("overlays/spot (changed): the local-config ConfigMap "
                             "karpenter-cluster is in the output")
    except Failed as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    print(f"ok   images and cluster name each set in one place ({len(overlays)} overlays)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
