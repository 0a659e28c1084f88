"""Merge bench/gpu-run's step outputs into results.json and render results.md.

    python bench/gpu_report.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STEPS = ("versions", "engine", "packed", "host", "e2e", "latency")


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError) as exc:
        return {"error": f"unreadable: {exc}"}


def _packed_row(p: dict) -> str:
    if not p or "error" in p:
        return f"| engine, --batch-layout packed | failed: {p.get('error', 'not run')} |"
    return (f"| engine, --batch-layout packed ({p['batch_layout']}, max score diff "
            f"{p['max_abs_score_diff']:.1e}) | {p['engine_pairs_per_s']:.0f} |")


def render(r: dict) -> str:
    v = r.get("versions", {})
    lines = [f"# bench/gpu-run on {v.get('device_name', '?')}", "",
             f"{v.get('cores', '?')} cores ({v.get('cpu', '?')}); torch {v.get('torch')} "
             f"(CUDA {v.get('cuda')}), transformers {v.get('transformers')}, tokenizers "
             f"{v.get('tokenizers')}, librdkafka {v.get('librdkafka')}, Python "
             f"{v.get('python')}.", ""]
    e = r.get("engine", {})
    lines += ["## 1. Engine vs the common loop (BERT-base shape)", ""]
    if "error" in e:
        lines += [f"failed: {e['error']}", ""]
    else:
        lines += ["| configuration | pairs/s |", "|---|---:|",
                  f"| reference: batch {e['ref_batch']}, input order, {e['reference_precision']} "
                  f"| {e['baseline_pairs_per_s']:.0f} |",
                  f"| engine: token budget {e['token_budget']}, sorted, {e['precision']} "
                  f"| {e['engine_pairs_per_s']:.0f} |",
                  f"| model only (same batches, on the device) | {e['model_only_pairs_per_s']:.0f} |",
                  _packed_row(r.get("packed", {})),
                  "", f"Speed-up {e['ratio']:.2f}x; engine at {e['engine_vs_model_only']:.0%} of "
                  f"the model-only rate; max score diff {e['max_abs_score_diff']:.1e}; "
                  f"{e['pairs']} pairs, mean {e['token_length']['mean']} tokens.", ""]
        if "profile" in e:
            lines += [f"Profile: {e['profile']['limit']}.", ""]
    for key, title in (("host", "2. Host path, nearly free model"),
                       ("e2e", "3. One worker end to end, BERT-base")):
        h = r.get(key, {})
        lines += [f"## {title}", ""]
        if "error" in h:
            lines += [f"failed: {h['error']}", ""]
            continue
        raw = h["raw_tokenizer_pairs_per_s"]
        lines += ["| what | pairs/s | x raw tokenizer |", "|---|---:|---:|",
                  f"| raw tokenizer (encode_batch, all cores) | {raw:.0f} | 1.00 |",
                  f"| transformers call | {h['transformers_call_pairs_per_s']:.0f} | "
                  f"{h['transformers_call_pairs_per_s'] / raw:.2f} |",
                  f"| engine alone | {h['engine_pairs_per_s']:.0f} | "
                  f"{h['engine_vs_raw_tokenizer']:.2f} |"]
        for w in h["workers"]:
            done = "" if w["complete"] else f" (only {w['answers']} answers)"
            lines.append(f"| worker, {w['processes']} process(es), {w['answers']} pairs{done} "
                         f"| {w['pairs_per_s']:.0f} | {w['vs_raw_tokenizer']:.2f} |")
        lines += ["", f"Model: {h['model']}.", ""]
    lat = r.get("latency", {})
    lines += ["## 4. Latency under load (BERT-base)", ""]
    if "error" in lat:
        lines += [f"failed: {lat['error']}", ""]
    else:
        lines += [f"Capacity {lat['capacity_pairs_per_s']:.0f} pairs/s.", "",
                  "| load | pairs/s | client p50 / p90 / p99 (ms) | worker histogram p50 / p90 / p99 |",
                  "|---|---:|---|---|"]
        for p in lat["phases"]:
            c, w = p["client"], p["worker_histogram"]
            lines.append(f"| {p['share_of_capacity']:.0%} | {p['rate_pairs_per_s']:.0f} | "
                         f"{c['p50'] * 1e3:.0f} / {c['p90'] * 1e3:.0f} / {c['p99'] * 1e3:.0f} | "
                         f"{w['p50'] * 1e3:.0f} / {w['p90'] * 1e3:.0f} / {w['p99'] * 1e3:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main(out: Path) -> int:
    results = {step: _load(out / f"{step}.json") for step in STEPS}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    try:
        text = render(results)
    except (KeyError, TypeError) as exc:  # a step's JSON without the expected fields
        text = f"# bench/gpu-run\n\nrendering failed ({exc!r}); see results.json\n"
    (out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
