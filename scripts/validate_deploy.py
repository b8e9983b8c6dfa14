#!/usr/bin/env python3
"""Validate rendered kustomize output: core kinds with kubernetes-validate, custom resources
(KEDA, Karpenter, Prometheus Operator) with check-jsonschema against the CRD schemas in
../shared/schemas, converted from openAPIV3Schema to strict JSON Schema. Called by
scripts/validate-deploy.sh with the venv's tools on PATH.

usage: validate_deploy.py --schemas DIR --kubernetes-version X.Y.Z --work DIR RENDERED.yaml...
Exit status 1 on any error, including a kind that has no schema at all.
"""

import argparse
import json
import os
import subprocess
import sys

import yaml

# API groups kubernetes-validate knows (the built-in API).
CORE_GROUPS = {"", "apps", "policy", "batch", "autoscaling", "networking.k8s.io",
               "rbac.authorization.k8s.io", "scheduling.k8s.io", "storage.k8s.io"}


def convert(schema):
    """A Kubernetes structural schema -> JSON Schema, strict: objects that list their
    properties reject unknown ones (as the API server prunes and kubectl --validate=strict
    rejects them), so a misspelt field fails here instead of being dropped silently."""
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: convert(s) for name, s in value.items()}
        elif key in ("items", "not") or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = convert(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [convert(s) for s in value]
        elif key == "format" or key == "nullable" or key.startswith("x-kubernetes-"):
            # Kubernetes formats (int-or-string, duration as Go spells it) are not JSON
            # Schema's; CEL rules (x-kubernetes-validations) cannot be evaluated here.
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if (out.get("type") == "object" and "properties" in out
            and "additionalProperties" not in out
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def load_crd_schemas(directory):
    """(group, version, kind) -> [(source file, JSON Schema)]; several files may define one
    kind (Karpenter's core and AWS NodePool builds): a resource must pass all of them."""
    schemas = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(directory, name)) as f:
            for doc in yaml.safe_load_all(f):
                if not doc or doc.get("kind") != "CustomResourceDefinition":
                    continue
                spec = doc["spec"]
                for v in spec["versions"]:
                    s = v.get("schema", {}).get("openAPIV3Schema")
                    if s:
                        key = (spec["group"], v["name"], spec["names"]["kind"])
                        js = convert(s)
                        js["$schema"] = "http://json-schema.org/draft-07/schema#"
                        schemas.setdefault(key, []).append((name, js))
    return schemas


def gvk(doc):
    api = doc.get("apiVersion", "")
    group, _, version = api.rpartition("/")
    return group, version, doc.get("kind", "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--schemas", required=True)
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("rendered", nargs="+")
    args = ap.parse_args()
    crds = load_crd_schemas(args.schemas)
    if not crds:
        print(f"no CRD schemas found in {args.schemas}", file=sys.stderr)
        return 1
    os.makedirs(args.work, exist_ok=True)
    schema_files = {}
    for key, entries in crds.items():
        for i, (src, js) in enumerate(entries):
            path = os.path.join(args.work, f"schema-{key[0] or 'core'}-{key[1]}-{key[2]}-{i}.json")
            with open(path, "w") as f:
                json.dump(js, f)
            schema_files.setdefault(key, []).append((src, path))

    errors = 0
    for rendered in args.rendered:
        label = os.path.basename(rendered)
        with open(rendered) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        if not docs:
            print(f"{label}: renders to nothing", file=sys.stderr)
            errors += 1
            continue
        core = []
        for i, doc in enumerate(docs):
            key = gvk(doc)
            name = f"{label}: {key[2]} {doc.get('metadata', {}).get('name')} ({'/'.join(key[:2]).strip('/')})"
            if key in schema_files:
                instance = os.path.join(args.work, f"{label}-{i}.json")
                with open(instance, "w") as f:
                    json.dump(doc, f)
                for src, schema in schema_files[key]:
                    r = subprocess.run(
                        ["check-jsonschema", "--schemafile", schema, instance],
                        capture_output=True, text=True)
                    if r.returncode != 0:
                        errors += 1
                        print(f"FAIL {name} against {src}:\n{r.stdout}{r.stderr}", file=sys.stderr)
                    else:
                        print(f"ok   {name} against {src}")
            elif key[0] in CORE_GROUPS:
                core.append((name, doc))
            else:
                errors += 1
                print(f"FAIL {name}: no schema for this kind (add its CRD to ../shared/schemas)",
                      file=sys.stderr)
        if core:
            path = os.path.join(args.work, f"{label}-core.yaml")
            with open(path, "w") as f:
                yaml.safe_dump_all([d for _, d in core], f)
            r = subprocess.run(
                ["kubernetes-validate", "--strict", "--quiet",
                 "-k", args.kubernetes_version, path],
                capture_output=True, text=True)
            if r.returncode != 0 or "ERROR" in r.stdout or "ERROR" in r.stderr:
                errors += 1
                print(f"FAIL {label}: core kinds (kubernetes-validate {args.kubernetes_version}):\n"
                      f"{r.stdout}{r.stderr}", file=sys.stderr)
            else:
                for name, _ in core:
                    print(f"ok   {name} (kubernetes-validate --strict {args.kubernetes_version})")
    if errors:
        print(f"{errors} validation error(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
