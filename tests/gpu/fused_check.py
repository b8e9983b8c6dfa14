"""Helpers of tests/gpu/fused.sh (standard library only, so they run with any python3): results
file, reference comparisons, batch statistics, the summary table. Each subcommand prints one JSON
object (or the table) on stdout.

  record SUMMARY KEY VALUE              set SUMMARY[KEY] = VALUE (JSON if it parses; a.b nests)
  step SUMMARY NAME RC RESULT [LOG]     record one step's JSON result, pass/fail and figures
  skip SUMMARY NAME REASON              record a step left out (time budget, missing input)
  minilm-lines REF OUT                  minilm_reference.json items as `spotinfer batch` lines
  minilm-check REF BATCH_OUT [DTYPE]    min cosine of spotinfer's vectors against the reference
  fixture-check URL FIXTURE_DIR DTYPE   a served tiny fixture against its reference.json
  batch-stats OUT_JSONL LOG T0 T1       ok lines, seconds, model load and backend of one batch run
  compare A_JSONL B_JSONL|PEER_JSON [MIN]  cosines between two runs' vectors (pass: min >= MIN)
  server-log LOG                        the memory-cap and backend lines of a --json-output log
  memory PLAN_JSON SERVER_LOG REAL_MIB  plan's prediction against the process's GPU memory
  selftest-summary SELFTEST_JSON        the selftest's JSON condensed
  annotate RESULT RUN_JSON|SERVER_LOG   add the backend that really ran to RESULT
  table SUMMARY                         the speed rows and totals into SUMMARY, then the table
"""
import json
import math
import os
import sys
import urllib.error
import urllib.request

# Bounds: the references are float64 (transformers) / float32 (sentence-transformers); float32 on
# the GPU must match as tightly as on the CPU (tests/families.rs), float16/bfloat16 more loosely.
# bfloat16 keeps 8 mantissa bits: on the CPU (candle, reference backend) all-MiniLM-L6-v2 reached
# min cosine 0.9858 and the tiny decoders' per-token vectors 0.9934 in bfloat16 (0.99998 and
# 0.99996 in float16), so bfloat16 gets 0.98; compare the fused rows with the reference rows.
COSINE_MIN = {"float32": 0.9999, "float16": 0.999, "bfloat16": 0.98}
SCORE_MAX_ABS = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 1e-2}


def cosine(a, b):
    if len(a) != len(b):
        return float("nan")
    dot = sum(x * y for x, y in zip(a, b))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na > 0 and nb > 0 else float("nan")


def fmin(xs):
    """min that lets NaN win (a NaN vector must fail the check, not vanish)."""
    out = None
    for x in xs:
        if x != x:
            return float("nan")
        out = x if out is None else min(out, x)
    return out


def ge(x, bound):
    return x is not None and x == x and x >= bound


def load_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, d):
    with open(path + ".tmp", "w") as f:
        json.dump(d, f, indent=2)
    os.replace(path + ".tmp", path)


def read_summary(path):
    try:
        return load_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def cmd_record(path, key, value):
    """SUMMARY[a][b] = VALUE for KEY a.b (JSON if VALUE parses, else the string)."""
    d = read_summary(path)
    try:
        v = json.loads(value)
    except json.JSONDecodeError:
        v = value
    *parents, last = key.split(".")
    node = d
    for k in parents:
        node = node.setdefault(k, {})
    node[last] = v
    write_json(path, d)


FIGURES = [("figure_hint", "{}"), ("worst_fused_f16", "worst fused f16 cos {}"),
           ("worst_fused_bf16", "worst fused bf16 cos {}"), ("models_failed", "failed: {}"),
           ("min_cosine", "min cos {}"), ("min_cosine_embedding", "min cos {}"),
           ("min_cosine_tokens", "tokens {}"), ("max_abs_score_diff", "max |d score| {}"),
           ("sentences_per_s_after_load", "{} sent/s after load"),
           ("best_sentences_per_s", "{} sent/s best"), ("real_process_mib", "real {} MiB"),
           ("plan_needed_mib", "plan {} MiB"), ("real_over_plan", "real/plan {}"),
           ("parameters", "{} parameters"), ("backend", "backend {}"), ("fused_fallback", "fell back: {}"),
           ("http_best_sentences_per_s", "HTTP best {} sent/s"), ("http_best_concurrency", "at c={}"),
           ("p50_c1_ms", "p50 c=1 {} ms"), ("oom_survived", "survived {}"),
           ("capped_tokens", "budget capped to {}"), ("answered", "{} answered")]


def cmd_step(path, name, rc, result_file, log=""):
    """Records one step: its JSON result (or the log's tail), its exit status, pass and a figure."""
    rc = int(rc)
    try:
        with open(result_file) as f:
            text = f.read().strip()
        try:
            res = json.loads(text)
        except json.JSONDecodeError:  # output before the JSON: take its last line
            res = json.loads(text.splitlines()[-1]) if text else {}
        if not isinstance(res, dict):
            res = {"result": res}
    except (FileNotFoundError, json.JSONDecodeError, IndexError) as e:
        res = {"error": f"no JSON result ({e.__class__.__name__})"}
    res["exit_code"] = rc
    if rc in (124, 137):
        res["timed_out"] = True
    if "pass" not in res:
        res["pass"] = rc == 0 and "error" not in res
    else:
        res["pass"] = bool(res["pass"]) and rc == 0
    if not res["pass"] and log:
        try:
            with open(log, errors="replace") as f:
                res["log_tail"] = f.read()[-1500:]
        except FileNotFoundError:
            pass
    figs = [tpl.format(fmt(res[k], 1 if "sentences" in k and isinstance(res[k], float) else None))
            for k, tpl in FIGURES if res.get(k) is not None]
    if rc:
        figs.append(f"exit {rc}" + (" (timeout)" if rc in (124, 137) else ""))
    if res.get("error"):
        figs.append(str(res["error"])[:80])
    res["figure"] = ", ".join(figs)
    d = read_summary(path)
    d.setdefault("steps", {})[name] = res
    write_json(path, d)
    print(f"[{'PASS' if res['pass'] else 'FAIL'}] {name}: {res['figure']}", flush=True)


def cmd_skip(path, name, reason):
    d = read_summary(path)
    d.setdefault("steps", {})[name] = {"pass": False, "skipped": True, "figure": reason}
    write_json(path, d)
    print(f"[SKIP] {name}: {reason}", flush=True)


def batch_line(cid, text):
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
                       "body": {"input": text}})


def cmd_minilm_lines(ref, out):
    with open(out, "w") as f:
        for item in load_json(ref)["items"]:
            f.write(batch_line(item["id"], item["text"]) + "\n")


def vectors_of(path):
    """custom_id -> vector of a `spotinfer batch` output (None for a failed line)."""
    got = {}
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            resp = r.get("response") or {}
            vec = None
            if resp.get("status_code") == 200:
                vec = resp["body"]["data"][0]["embedding"]
            got[r["custom_id"]] = vec
    return got


def cmd_minilm_check(ref, out, dtype="float16"):
    want = {i["id"]: i["mean"] for i in load_json(ref)["items"]}
    try:
        got = vectors_of(out)
    except FileNotFoundError:
        got = {}
    cos = [cosine(got[k], w) if got.get(k) else float("nan") for k, w in want.items() if k in got]
    worst, bound = fmin(cos), COSINE_MIN[dtype]
    print(json.dumps({"items": len(cos), "expected": len(want), "min_cosine": worst,
                      "dtype": dtype, "bound": bound,
                      "pass": len(cos) == len(want) and ge(worst, bound)}))


def http(url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")
        try:
            return e.code, json.loads(text)
        except json.JSONDecodeError:
            return e.code, text
    except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
        return 0, f"{e.__class__.__name__}: {e}"


def check_fixture(ref, dtype, post):
    """Compares a fixture's outputs with reference.json; `post(route, body) -> (status, json)`."""
    items = ref["items"]
    res = {"kind": ref.get("reference_kind"), "items": len(items), "dtype": dtype}
    if ref.get("reference_kind") == "qwen3_reranker":
        bound = SCORE_MAX_ABS[dtype]
        default = ref["prompt"]["default_instruction"]
        diffs, errors = [], []
        for item in items:
            body = {"query": item["query"], "texts": [item["document"]]}
            if item["instruction"] != default:
                body["instruction"] = item["instruction"]
            status, got = post("/rerank", body)
            if status != 200:
                errors.append(f"{item['id']}: {status} {str(got)[:200]}")
                diffs.append(float("nan"))
                continue
            diffs.append(abs(got[0]["score"] - item["outputs"]["scores"][0]))
        worst = max(diffs, key=lambda d: (d != d, d)) if diffs else float("nan")
        res.update({"max_abs_score_diff": worst, "bound": bound, "errors": errors,
                    "pass": not errors and worst == worst and worst <= bound})
        return res
    bound = COSINE_MIN[dtype]
    texts = [i["text"] for i in items]
    status, got = post("/embed", {"inputs": texts, "normalize": False})
    if status != 200:
        res.update({"error": f"/embed {status} {str(got)[:300]}", "pass": False})
        return res
    emb = [cosine(g, i["outputs"]["embedding"]) for g, i in zip(got, items)]
    res["min_cosine_embedding"] = fmin(emb) if len(got) == len(items) else float("nan")
    ok = len(got) == len(items) and ge(res["min_cosine_embedding"], bound)
    # Per-token vectors (the backbone's last hidden state) where the reference has them.
    if all(isinstance(i["outputs"].get("tokens"), list) for i in items):
        status, got = post("/embed_all", {"inputs": texts})
        if status == 200 and len(got) == len(items):
            tok = []
            for g, i in zip(got, items):
                rows = i["outputs"]["tokens"]
                tok += [cosine(a, b) for a, b in zip(g, rows)] if len(g) == len(rows) else [float("nan")]
            res["min_cosine_tokens"] = fmin(tok)
            ok = ok and ge(res["min_cosine_tokens"], bound)
        else:
            res["tokens_error"] = f"/embed_all {status} {str(got)[:200]}"
            ok = False
    res.update({"bound": bound, "pass": ok})
    return res


def cmd_fixture_check(url, fixture_dir, dtype):
    ref = load_json(f"{fixture_dir}/reference.json")
    res = check_fixture(ref, dtype, lambda route, body: http(url + route, body))
    status, info = http(url + "/info")
    if status == 200:
        res.update({"backend": info.get("backend"), "model_dtype": info.get("model_dtype"),
                    "device": info.get("device")})
    print(json.dumps(res))


def log_events(path):
    """The JSON lines of a --json-output log (other lines skipped)."""
    out = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
    except FileNotFoundError:
        pass
    return out


def event(events, message):
    for e in events:
        m = e.get("message") or (e.get("fields") or {}).get("message")
        if m == message:
            return e
    return None


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def server_facts(events):
    loaded = event(events, "model loaded and warmed up") or {}
    cap = event(events, "token budget checked against the GPU's free memory") or {}
    pool = event(events, "fused backend: activation buffers reserved") or {}
    refused = event(events, "--gpu-backend fused refused: using the reference backend")
    cannot = event(events, "the fused backend cannot run this model: using the reference backend")
    facts = {"backend": loaded.get("backend"), "load_ms": num(loaded.get("load_ms")),
             "weights_mb": num(loaded.get("weights_mb")),
             "max_batch_tokens": num(loaded.get("max_batch_tokens"))}
    if cap:
        facts["memory_cap"] = {k: cap.get(k) for k in
                               ["configured", "capped", "fit_tokens", "activation_bytes_per_token",
                                "measured", "free_mib", "total_mib", "budget_mib"]}
    if pool:
        facts["fused_pool"] = {k: pool.get(k) for k in ["tokens", "pool_mib", "allocations"]}
    if refused or cannot:
        e = refused or cannot
        facts["fused_fallback"] = e.get("reason") or e.get("error") or e.get("message")
    return facts


def cmd_server_log(log):
    print(json.dumps(server_facts(log_events(log))))


def cmd_batch_stats(out, log, t0, t1):
    try:
        got = vectors_of(out)
    except FileNotFoundError:
        got = {}
    ok = sum(1 for v in got.values() if v is not None)
    secs = float(t1) - float(t0)
    events = log_events(log)
    facts = server_facts(events)
    done = event(events, "batch complete") or {}
    load_s = (facts.get("load_ms") or 0) / 1000
    print(json.dumps({"lines": len(got), "ok": ok, "seconds_incl_model_load": round(secs, 3),
                      "model_load_s": load_s, "backend": facts.get("backend"),
                      "fused_fallback": facts.get("fused_fallback"),
                      "sentences_per_s": round(ok / secs, 1) if secs > 0 else None,
                      "sentences_per_s_after_load":
                          round(ok / (secs - load_s), 1) if secs > load_s else None,
                      "log_lines_per_second": num(done.get("lines_per_second")),
                      "pass": ok > 0 and ok == len(got)}))


def cmd_compare(a, b, bound="0.99"):
    va = vectors_of(a)
    if b.endswith(".jsonl"):
        vb = vectors_of(b)
        keys = [k for k in va if k in vb]
    else:  # a peer dump: vectors of the first N corpus lines, custom ids r0, r1, ...
        peer = load_json(b)
        vb = {f"r{i}": v for i, v in enumerate(peer)}
        keys = [f"r{i}" for i in range(len(peer)) if f"r{i}" in va]
    cos = [cosine(va[k], vb[k]) if va[k] is not None and vb[k] is not None else float("nan")
           for k in keys]
    finite = sorted(c for c in cos if c == c)
    print(json.dumps({"compared": len(cos), "nan": len(cos) - len(finite),
                      "min_cosine": fmin(cos) if cos else None,
                      "mean_cosine": sum(finite) / len(finite) if finite else None,
                      "p01_cosine": finite[len(finite) // 100] if finite else None,
                      "bound": float(bound),
                      "pass": bool(cos) and ge(fmin(cos), float(bound))}))


def cmd_memory(plan_path, log, real_mib):
    try:
        plan = load_json(plan_path)
        g = plan["gpu_memory"]
        pred = {k: g.get(k) for k in ["needed_bytes", "weights_bytes", "activation_bytes",
                                      "context_bytes", "max_batch_tokens_that_fit"]}
        pred.update({"dtype": plan.get("dtype"), "max_batch_tokens": plan.get("max_batch_tokens")})
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError) as e:
        pred = {"error": f"plan output unreadable: {e}"}
    real = num(real_mib)
    res = {"plan": pred, "real_process_mib": real, "server": server_facts(log_events(log))}
    needed = pred.get("needed_bytes")
    if real and needed:
        res["plan_needed_mib"] = round(needed / 2**20, 1)
        res["real_over_plan"] = round(real * 2**20 / needed, 3)
    print(json.dumps(res))


def fmt(x, nd=None):
    """Cosines and errors with 6 decimals, small figures with 2, large ones as integers."""
    if isinstance(x, float):
        if x != x:
            return "NaN"
        if nd is not None:
            return f"{x:.{nd}f}"
        if abs(x) < 1.5:
            return f"{x:.6f}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"
        return f"{x:.2f}" if abs(x) < 100 else f"{x:,.0f}"
    return "-" if x is None else str(x)


def speed_rows(steps):
    """model -> fused / reference / peer sentences per second and the cosines between them."""
    out = {}
    for name, s in steps.items():
        parts = name.split("-")
        if name.startswith("speed-") and parts[-1] in ("fused", "reference"):
            row = out.setdefault("-".join(parts[1:-1]), {})
            row[parts[-1]] = s.get("sentences_per_s_after_load")
            row[parts[-1] + "_backend"] = s.get("backend")
        elif name.startswith("peer-"):
            out.setdefault(name[5:], {})["peer"] = s.get("best_sentences_per_s")
        elif name.startswith("cos-"):
            model, _, pair = name[4:].partition("-fused-vs-")
            if pair:
                out.setdefault(model, {})["min_cosine_fused_vs_" + pair] = s.get("min_cosine")
    return out


def cmd_selftest_summary(path):
    """The selftest's JSON, condensed: kernels, every model x dtype's worst cosines."""
    try:
        d = load_json(path)
    except (FileNotFoundError, json.JSONDecodeError) as e:
        print(json.dumps({"error": f"no selftest JSON ({e.__class__.__name__})", "pass": False}))
        return
    k = d.get("kernels") or {}
    m = d.get("models") or {}
    failed_models = [f"{x.get('name')} {y.get('dtype')}" for x in m.get("models", [])
                     for y in x.get("dtypes", []) if not y.get("passed")]
    failed_models += [f"{x.get('name')}: {x.get('error')}" for x in m.get("models", [])
                      if x.get("error")]
    print(json.dumps({"device": d.get("device"), "kernel_cases": k.get("cases"),
                      "kernels_failed": k.get("failed"), "setup_error": k.get("setup_error"),
                      "models": len(m.get("models", [])), "models_failed": failed_models,
                      "worst_fused_f16": m.get("worst_fused_f16"),
                      "worst_fused_bf16": m.get("worst_fused_bf16"),
                      "figure_hint": f"{k.get('cases')} kernel cases, {len(m.get('models', []))} models",
                      "pass": bool(d.get("passed"))}))


def cmd_annotate(result, source):
    """Adds the backend that really ran (and why fused fell back) from a run's stats JSON or a
    server's --json-output log to RESULT."""
    try:
        a = load_json(result)
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if source.endswith(".json"):
        try:
            b = load_json(source)
        except (FileNotFoundError, json.JSONDecodeError):
            b = {}
    else:
        b = server_facts(log_events(source))
    for k in ["backend", "fused_fallback"]:
        if b.get(k) is not None or k not in a:
            a[k] = b.get(k, a.get(k))
    write_json(result, a)


def cmd_table(path):
    d = read_summary(path)
    steps = d.get("steps", {})
    speed = speed_rows(steps)
    d["speed"] = speed
    d["passed"] = sum(1 for s in steps.values() if s.get("pass"))
    d["failed"] = [n for n, s in steps.items() if not s.get("pass") and not s.get("skipped")]
    d["skipped"] = [n for n, s in steps.items() if s.get("skipped")]
    write_json(path, d)
    for k in ["gpu", "date", "commit", "spotinfer"]:
        if d.get(k):
            print(f"{k}: {d[k]}")
    w = max([len(n) for n in steps] + [4])
    print(f"{'step':<{w}}  result  figures")
    for name, s in steps.items():
        res = "PASS" if s.get("pass") else ("SKIP" if s.get("skipped") else "FAIL")
        print(f"{name:<{w}}  {res:<6}  {s.get('figure', '')}")
    if speed:
        print(f"\n{'sentences/s after load':<24} {'fused':>9} {'reference':>9} {'peer':>9}"
              f"  fused/peer  fused/ref  cos(fused,ref)  cos(fused,peer)")
        for model, s in speed.items():
            f, r, p = s.get("fused"), s.get("reference"), s.get("peer")
            fp = f"{f / p:.2f}x" if f and p else "-"
            fr = f"{f / r:.2f}x" if f and r else "-"
            print(f"{model:<24} {fmt(f):>9} {fmt(r):>9} {fmt(p):>9}  {fp:>10}  {fr:>9}  "
                  f"{fmt(s.get('min_cosine_fused_vs_reference'), 6):>14}  "
                  f"{fmt(s.get('min_cosine_fused_vs_peer'), 6):>15}")
    print(f"\n{d['passed']} passed, {len(d['failed'])} failed, {len(d['skipped'])} skipped"
          + (f"; failed: {', '.join(d['failed'])}" if d["failed"] else ""))


def try_json(path):
    try:
        return load_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def field(e, key):
    return (e.get("fields") or {}).get(key, e.get(key))


def best_level(report):
    levels = [lv for lv in (report or {}).get("levels", []) if lv.get("sentences_per_s")]
    return max(levels, key=lambda lv: lv["sentences_per_s"]) if levels else None


def cmd_http_summary(bench_json, log):
    """One HTTP step: best level, p50 at concurrency 1, lost requests, the backend that ran."""
    rep = try_json(bench_json) or {}
    levels = rep.get("levels", [])
    best = best_level(rep)
    c1 = next((lv for lv in levels if lv.get("concurrency") == 1), None)
    lost = sum(lv.get("lost", 0) for lv in levels)
    facts = server_facts(log_events(log))
    print(json.dumps({
        "http_best_sentences_per_s": best and round(best["sentences_per_s"], 1),
        "http_best_concurrency": best and best["concurrency"],
        "p50_c1_ms": c1 and round(c1["p50_ms"], 3),
        "lost": lost, "corpus_mean_tokens": rep.get("corpus_mean_tokens"),
        "backend": facts.get("backend"), "fused_fallback": facts.get("fused_fallback"),
        "levels": [{k: lv.get(k) for k in ("concurrency", "requests", "errors", "lost",
                                            "sentences_per_s", "p50_ms", "p99_ms")}
                   for lv in levels],
        "pass": best is not None and lost == 0}))


def cmd_oom_summary(bench_json, log, alive):
    """The absurd-budget step: the process survived, answered, and what the cap did."""
    rep = try_json(bench_json) or {}
    lv = (rep.get("levels") or [{}])[0]
    events = log_events(log)
    cap = event(events, "token budget checked against the GPU's free memory") or {}
    splits = sum(1 for e in events if "split" in str(field(e, "message")).lower())
    ok = (lv.get("requests") or 0) - (lv.get("errors") or 0)
    print(json.dumps({
        "oom_survived": alive == "true", "answered": ok, "lost": lv.get("lost"),
        "configured_tokens": num(field(cap, "configured")),
        "capped_tokens": num(field(cap, "capped")),
        "free_mib": num(field(cap, "free_mib")), "split_events": splits,
        "pass": alive == "true" and ok > 0 and not lv.get("lost")}))


def cmd_issue_keys(path):
    """Adds the keys issue 17 names to summary.json, derived from the steps (null: not run)."""
    d = read_summary(path)
    st = d.get("steps", {})

    def g(name, key):
        return (st.get(name) or {}).get(key)

    gpu = str(d.get("gpu") or "").split(",")
    speed = speed_rows(st)
    large_tokens = g("http-bert-large-fused", "corpus_mean_tokens")
    large_offline = (speed.get("bert-large") or {}).get("fused")
    d["issue17"] = {
        "card": gpu[0].strip() if gpu else None,
        "driver": gpu[1].strip() if len(gpu) > 1 else None,
        "commit": d.get("commit") or d.get("tree_commit"),
        "selftest_pass": g("selftest", "pass"),
        "minilm": {
            "ref_min_cos_f16": g("minilm-ref-fused-float16", "min_cosine"),
            "ref_min_cos_bf16": g("minilm-ref-fused-bfloat16", "min_cosine"),
            "st_best": (speed.get("minilm") or {}).get("peer"),
            "offline": (speed.get("minilm") or {}).get("fused"),
            "http_best": g("http-minilm-fused", "http_best_sentences_per_s"),
            "p50_c1_ms": g("http-minilm-fused", "p50_c1_ms"),
        },
        "bert_large": {
            "st_best": (speed.get("bert-large") or {}).get("peer"),
            "offline": large_offline,
            "http_best": g("http-bert-large-fused", "http_best_sentences_per_s"),
            # 2 x 335 M FLOP per token (matrix products; attention left out), at the HTTP
            # corpus's mean tokens per text: an estimate, named as one.
            "tflops": round(large_offline * large_tokens * 2 * 335e6 / 1e12, 1)
            if large_offline and large_tokens else None,
        },
        "oom_survived": g("oom", "oom_survived"),
    }
    write_json(path, d)
    print(json.dumps(d["issue17"]))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"record": cmd_record, "step": cmd_step, "skip": cmd_skip, "minilm-lines": cmd_minilm_lines,
          "minilm-check": cmd_minilm_check, "fixture-check": cmd_fixture_check,
          "batch-stats": cmd_batch_stats, "compare": cmd_compare,
          "server-log": cmd_server_log, "selftest-summary": cmd_selftest_summary,
          "annotate": cmd_annotate, "memory": cmd_memory, "table": cmd_table,
          "http-summary": cmd_http_summary, "oom-summary": cmd_oom_summary,
          "issue-keys": cmd_issue_keys}[cmd]
    fn(*args)


if __name__ == "__main__":
    main()
