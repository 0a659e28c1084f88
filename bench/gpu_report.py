"""bench/gpu-run's report: its steps' JSON merged into results.json, and results.md.

    python bench/gpu_report.py STEP_DIR OUT_DIR

gpu-run calls it before and after every step, so a run cut short (the device tool's time limit)
still leaves both files, valid, with every step that finished. STEP_DIR holds NAME.json of each
step (a step that failed or did not finish holds {"error": ...}) and steps.tsv (name, seconds,
exit status). Both files are replaced whole, never left half-written.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# In the order gpu-run runs them: what the first GPU run must tell us comes first.
STEPS = ("check", "engine", "fp16", "e2e", "memory", "latency", "host", "packed")
TITLES = {"check": "the machine is ready", "engine": "engine vs the common loop, BERT-base",
          "fp16": "fp16 against fp32, the bundled (trained) model",
          "e2e": "one worker end to end, BERT-base", "memory": "adaptive batch size, OOM drill",
          "latency": "latency under load", "host": "host path, nearly free model",
          "packed": "engine, packed batches"}
# The issue's goals (19): what each needs, and the bar.
WORKER_GOAL = 30_000        # pairs/s, one worker end to end, BERT-base fp16 (moonshot 60,000)
ENGINE_VS_MODEL_GOAL = 0.9  # the engine within 10% of the model-only rate
AGREEMENT_GOAL = 0.999      # fp16 labels against fp32


def _load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text() or "{}")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"error": f"unreadable output: {exc}"}


def _times(step_dir: Path) -> dict[str, tuple[str, str]]:
    try:
        lines = (step_dir / "steps.tsv").read_text().splitlines()
    except OSError:
        return {}
    return {f[0]: (f[1], f[2]) for f in (line.split("\t") for line in lines) if len(f) == 3}


def _worker(r: dict, processes: int) -> dict | None:
    e2e = r.get("e2e") or {}
    return next((w for w in e2e.get("workers", []) if w["processes"] == processes), None)


def goals(r: dict) -> list[tuple[str, str, bool | None]]:
    """(goal, what was measured, met) for each of the issue's goals; met None: not measured."""
    out = []
    w = _worker(r, 1)
    if w is None:
        out.append((f"one worker end to end, BERT-base fp16 >= {WORKER_GOAL:,} pairs/s",
                    "not measured", None))
    else:
        done = "" if w["complete"] else f" (only {w['answers']} answers)"
        out.append((f"one worker end to end, BERT-base fp16 >= {WORKER_GOAL:,} pairs/s",
                    f"{w['pairs_per_s']:,.0f} pairs/s{done}",
                    w["complete"] and w["pairs_per_s"] >= WORKER_GOAL))
    e = r.get("engine") or {}
    ratio = e.get("engine_vs_model_only")
    out.append((f"engine within 10% of the model-only rate (>= {ENGINE_VS_MODEL_GOAL:.0%})",
                "not measured" if ratio is None else
                f"{ratio:.0%} ({e['engine_pairs_per_s']:,.0f} of "
                f"{e['model_only_pairs_per_s']:,.0f} pairs/s)",
                None if ratio is None else ratio >= ENGINE_VS_MODEL_GOAL))
    v = (r.get("fp16") or {}).get("vs_fp32")
    out.append((f"fp16 label agreement with fp32 >= {AGREEMENT_GOAL:.1%} (trained model)",
                "not measured" if v is None else
                f"{v['label_agreement']:.2%} ({v['label_disagreements']} of "
                f"{r['fp16']['pairs']} pairs differ)",
                None if v is None else v["label_agreement"] >= AGREEMENT_GOAL))
    return out


def _status(name: str, step: dict | None, times: dict) -> str:
    seconds = f"{times[name][0]} s" if name in times else ""
    if step is None:
        return f"| {name} | not run | {seconds} |"
    if "error" in step:
        why = step["error"].replace("|", "\\|")  # a table cell
        return f"| {name} | **failed**: {why} | {seconds} |"
    if step.get("ok") is False:
        return f"| {name} | **failed**: see its section | {seconds} |"
    return f"| {name} | ok | {seconds} |"


def _engine(r: dict) -> list[str]:
    e = r["engine"]
    p = r.get("packed") or {}
    packed = (f"| engine, --batch-layout packed | {p['engine_pairs_per_s']:,.0f} |"
              if "engine_pairs_per_s" in p else "")
    lines = ["| configuration | pairs/s |", "|---|---:|",
             f"| reference: batch {e['ref_batch']}, input order, {e['reference_precision']} | "
             f"{e['baseline_pairs_per_s']:,.0f} |",
             f"| engine: token budget {e['token_budget']}, sorted, {e['precision']}, "
             f"{e['batch_layout']} | {e['engine_pairs_per_s']:,.0f} |",
             f"| model only (the engine's batches, already on the device) | "
             f"{e['model_only_pairs_per_s']:,.0f} |"] + ([packed] if packed else [])
    lines += ["", f"Speed-up {e['ratio']:.2f}x; engine at {e['engine_vs_model_only']:.0%} of "
                  f"the model-only rate; against the reference: max score diff "
                  f"{e['max_abs_score_diff']:.1e}; {e['pairs']:,} pairs, mean "
                  f"{e['token_length']['mean']} tokens ({e['pair_source']})."]
    if e.get("vs_fp32"):
        v = e["vs_fp32"]
        lines.append(f"{e['precision']} against fp32 (random weights, so small margins): max "
                     f"score diff {v['max_abs_score_diff']:.1e}, label agreement "
                     f"{v['label_agreement']:.2%}.")
    if e.get("peak_memory_bytes"):
        lines.append(f"Peak device memory while timed: {e['peak_memory_bytes'] / 2**30:.2f} GiB.")
    if "profile" in e:
        lines.append(f"Profile: {e['profile']['limit']}.")
    return lines


def _fp16(r: dict) -> list[str]:
    f = r["fp16"]
    v = f["vs_fp32"]
    return [f"{f['model']}, {f['pairs']:,} pairs: max score diff {v['max_abs_score_diff']:.1e}, "
            f"max probability diff {v['max_abs_prob_diff']:.1e}, label agreement "
            f"{v['label_agreement']:.3%} ({v['label_disagreements']} pairs differ). Engine "
            f"{f['engine_pairs_per_s']:,.0f} pairs/s, model only "
            f"{f['model_only_pairs_per_s']:,.0f}."]


def _workers(h: dict) -> list[str]:
    raw = h["raw_tokenizer_pairs_per_s"]
    lines = ["| what | pairs/s | x raw tokenizer |", "|---|---:|---:|",
             f"| raw tokenizer (encode_batch, all cores) | {raw:,.0f} | 1.00 |",
             f"| transformers call | {h['transformers_call_pairs_per_s']:,.0f} | "
             f"{h['transformers_call_pairs_per_s'] / raw:.2f} |",
             f"| engine alone | {h['engine_pairs_per_s']:,.0f} | "
             f"{h['engine_vs_raw_tokenizer']:.2f} |"]
    for w in h["workers"]:
        done = "" if w["complete"] else f" (only {w['answers']} answers)"
        lines.append(f"| worker, {w['processes']} process(es), {w['answers']:,} pairs{done} "
                     f"| {w['pairs_per_s']:,.0f} | {w['vs_raw_tokenizer']:.2f} |")
    return lines + ["", f"Model: {h['model']}."]


def _memory(r: dict) -> list[str]:
    m = r["memory"]
    where = "a GPU simulated on the CPU" if m["simulated"] else "the GPU"
    lines = [f"On {where}: start-up budget {m['start_budget']:,} tokens (peak "
             f"{m['calm_peak_bytes'] / 2**20:,.0f} MiB of activations); "
             f"{m['ballast_bytes'] / 2**30:.2f} GiB taken, "
             f"{m['headroom_bytes'] / 2**20:,.0f} MiB left free; the engine started at "
             f"{m['oversized_budget']:,}.", "",
             "| pass | budget before -> after | OOM retries | all pairs | label agreement |",
             "|---|---|---:|---|---:|"]
    for name, p in [("pressed", m["pressed"])] + [(f"regrow {i + 1}", p)
                                                 for i, p in enumerate(m["regrow"])]:
        if "crashed" in p:
            lines.append(f"| {name} | {p['budget_before']:,} -> crashed: {p['crashed']} | | | |")
            continue
        lines.append(f"| {name} | {p['budget_before']:,} -> {p['budget_after']:,} | "
                     f"{p['oom_retries']} | {'yes' if p['complete'] else '**no**'} | "
                     f"{p['label_agreement']:.2%} |")
    lines += ["", f"Shrank on a real out-of-memory error: {m['shrank']}; regrew: {m['regrew']} "
                  f"(lowest {m['budget_min']:,}, final {m['budget_final']:,}); "
                  f"{'passed' if m['ok'] else '**failed**'}."]
    return lines


def _latency(r: dict) -> list[str]:
    lat = r["latency"]
    lines = [f"Capacity {lat['capacity_pairs_per_s']:,.0f} pairs/s.", "",
             "| load | pairs/s | client p50 / p90 / p99 (ms) | worker histogram p50 / p90 / p99 |",
             "|---|---:|---|---|"]
    for p in lat["phases"]:
        c, w = p["client"], p["worker_histogram"]
        lines.append(f"| {p['share_of_capacity']:.0%} | {p['rate_pairs_per_s']:,.0f} | "
                     f"{c['p50'] * 1e3:.0f} / {c['p90'] * 1e3:.0f} / {c['p99'] * 1e3:.0f} | "
                     f"{w['p50'] * 1e3:.0f} / {w['p90'] * 1e3:.0f} / {w['p99'] * 1e3:.0f} |")
    return lines


def _summary(r: dict) -> list[str]:
    e, e2e = r.get("engine") or {}, r.get("e2e") or {}
    rows = [("model only", e.get("model_only_pairs_per_s")),
            ("engine (mgeo bench)", e.get("engine_pairs_per_s")),
            ("engine alone, worker-sized calls (host-path step)", e2e.get("engine_pairs_per_s"))]
    rows += [(f"worker end to end, {n} process(es)", (_worker(r, n) or {}).get("pairs_per_s"))
             for n in (1, 2)]
    return ["| BERT-base on a GPU (the bundled model end to end in a CPU rehearsal) | pairs/s |",
            "|---|---:|"] + [
        f"| {what} | {'not measured' if rate is None else f'{rate:,.0f}'} |"
        for what, rate in rows]


SECTIONS = (("Summary: the model-only rate beside the engine's and the worker's", None, _summary),
            ("1. Engine vs the common loop (BERT-base shape)", "engine", _engine),
            ("2. fp16 against fp32 on the same real-length pairs", "fp16", _fp16),
            ("3. One worker end to end, BERT-base", "e2e", lambda r: _workers(r["e2e"])),
            ("4. Adaptive batch size on real GPU memory", "memory", _memory),
            ("5. Latency under load (BERT-base)", "latency", _latency),
            ("6. Host path, nearly free model", "host", lambda r: _workers(r["host"])))


def render(r: dict, times: dict) -> str:
    c = r.get("check") or {}
    v = c.get("versions", {})
    lines = [f"# bench/gpu-run on {c.get('device_name', '?')}", "",
             f"{c.get('cores', '?')} cores ({c.get('cpu', '?')}); Python {c.get('python')}; "
             f"torch {v.get('torch')} (CUDA {v.get('cuda')}), transformers "
             f"{v.get('transformers')}, tokenizers {v.get('tokenizers')}, librdkafka "
             f"{v.get('librdkafka')}.", ""]
    if c.get("device") == "cpu":
        lines += ["A CPU rehearsal (`--cpu`, small sizes; the fp16 and memory steps on a GPU "
                  "simulated on the CPU): the goals are an H100's, not this machine's.", ""]
    lines += ["| step | status | seconds |", "|---|---|---:|"]
    lines += [_status(name, r.get(name), times) for name in STEPS]
    lines += ["", "## Goals (issue 19)", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {goal} | {got} | {'not measured' if met is None else 'met' if met else 'NOT met'} |"
              for goal, got, met in goals(r)]
    for title, step, body in SECTIONS:
        lines += ["", f"## {title}", ""]
        data = r.get(step) if step else {}
        if data is None:
            lines.append("not run")
        elif "error" in data:
            lines.append(f"failed: {data['error']}")
        else:
            try:
                lines += body(r)
            except (KeyError, TypeError, ValueError) as exc:  # a step's JSON of another shape
                lines.append(f"rendering failed ({exc!r}); see results.json")
    return "\n".join(lines) + "\n"


def _replace(path: Path, text: str) -> None:
    """Write `path` whole: a reader (or a kill) never sees it half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(step_dir: Path, out: Path) -> int:
    results = {name: _load(step_dir / f"{name}.json") for name in STEPS}
    times = _times(step_dir)
    results["steps"] = {name: {"seconds": float(t[0]), "status": t[1]}
                        for name, t in times.items()}
    results["goals"] = [{"goal": g, "measured": m, "met": met} for g, m, met in goals(results)]
    _replace(out / "results.json", json.dumps(results, indent=1))
    _replace(out / "results.md", render(results, times))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
