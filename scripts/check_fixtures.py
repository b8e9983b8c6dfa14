#!/usr/bin/env python3
"""Check that every tiny fixture folder under tests/fixtures/ loads back from disk
(transformers / sentence-transformers with HF_HUB_OFFLINE=1, or the hand-written forwards for
the remote-code families) and reproduces its reference.json:

  * input_ids / token_type_ids exactly (HF fast tokenizer AND the raw tokenizer.json with the
    shipped truncation/padding overridden, as a Rust loader sees it),
  * every float output in float64 to 1e-7 relative (the file has 9 significant digits),
  * plain float32 transformers (no float64 patches) within 2e-4 absolute,
  * the real-model references (mpnet_reference.json, splade_reference.json) when their model
    folders are present (scripts/fetch-mpnet.sh, scripts/fetch-splade.sh), unless --tiny-only.

    VENV="$(scripts/make-fixture-venv.sh | tail -n1)"
    "$VENV/bin/python" scripts/check_fixtures.py [NAME ...] [--tiny-only]

Exit status 0 when everything matches; prints one line per fixture.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models_lib as L  # noqa: E402,F401  (sets HF_HUB_OFFLINE)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import tiny_compute as C  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"


def close(ref, got, rtol, atol) -> tuple[bool, float]:
    a, b = np.asarray(ref, dtype=np.float64), np.asarray(got, dtype=np.float64)
    if a.shape != b.shape:
        return False, float("inf")
    d = np.abs(a - b)
    return bool(np.all(d <= atol + rtol * np.abs(a))), float(d.max()) if d.size else 0.0


def compare(ref_items, got_items, rtol, atol) -> list[str]:
    errors = []
    for r, g in zip(ref_items, got_items, strict=True):
        for key in ("input_ids", "token_type_ids"):
            if key in r and r[key] != g.get(key):
                errors.append(f"{r['id']}: {key} differ")
        for k, v in r["outputs"].items():
            w = g["outputs"].get(k)
            if w is None:
                errors.append(f"{r['id']}: output {k} missing")
                continue
            if k == "sparse":
                if v["indices"] != w["indices"]:
                    # float32 may flip an entry that is ~0 in float64: compare on the union
                    dv, dw = dict(zip(v["indices"], v["values"])), dict(zip(w["indices"], w["values"]))
                    keys = sorted(set(dv) | set(dw))
                    ok, d = close([dv.get(i, 0.0) for i in keys], [dw.get(i, 0.0) for i in keys], rtol, atol)
                    if not ok or rtol < 1e-5:
                        errors.append(f"{r['id']}: sparse indices differ")
                    continue
                ok, d = close(v["values"], w["values"], rtol, atol)
            elif k == "yes_no_logits":
                ok, d = close([v["yes"], v["no"]], [w["yes"], w["no"]], rtol, atol)
            else:
                ok, d = close(v, w, rtol, atol)
            if not ok:
                errors.append(f"{r['id']}: {k} max abs diff {d:.3g}")
    return errors


def check_tiny(folder: Path) -> list[str]:
    ref = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    errors = []
    got64, _ = C.compute(folder, ref, "f64")
    errors += [f"f64 {e}" for e in compare(ref["items"], got64, rtol=1e-7, atol=1e-9)]
    got32, _ = C.compute(folder, ref, "f32")
    errors += [f"f32 {e}" for e in compare(ref["items"], got32, rtol=0.0, atol=2e-4)]
    return errors


def check_real(name: str) -> list[str]:
    import make_real_references as R

    path = FIXTURES / f"{name}_reference.json"
    if not path.exists():
        return [f"{path} missing"]
    return R.check(name, json.loads(path.read_text(encoding="utf-8")))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="fixture folder names (default: every folder with a reference_kind)")
    ap.add_argument("--tiny-only", action="store_true", help="skip the real-model references")
    args = ap.parse_args()
    torch.set_num_threads(1)
    folders = []
    for p in sorted(FIXTURES.iterdir()):
        if (p / "reference.json").exists() and "reference_kind" in json.loads((p / "reference.json").read_text()):
            if not args.names or p.name in args.names:
                folders.append(p)
    failed = total = 0
    for f in folders:
        errs = check_tiny(f)
        total += 1
        failed += bool(errs)
        print(f"{'FAIL' if errs else 'ok  '} {f.name}" + "".join(f"\n     {e}" for e in errs[:20]))
    if not args.tiny_only and not args.names:
        for name in ("mpnet", "splade"):
            errs = check_real(name)
            skipped = errs == ["SKIP"]
            total += not skipped
            failed += bool(errs) and not skipped
            label = "skip" if skipped else ("FAIL" if errs else "ok  ")
            print(f"{label} {name}_reference.json" + ("" if skipped else "".join(f"\n     {e}" for e in errs[:20])))
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
