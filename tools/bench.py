"""`mgeo bench`: the loop people usually write against our engine, same pairs, same model.

The reference loop is the common one: batches of `ref_batch` pairs in input order, padded to
the longest pair of each batch, `.half()` on a GPU, one batch at a time. The engine is the
worker's. Both are warmed up first, then timed on identical pairs; the scores are compared,
so a speed-up that changed the answers would show.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mgeo.plots import machine_name, pyplot, save
from mgeo.tools.bench_settings import BenchSettings
from mgeo.tools.workload import agreement, bench_model, make_pairs, simulated_gpu
from mgeo.worker.inference.batcher import padded_tokens
from mgeo.worker.inference.device import resolve_device, resolve_precision, torch_dtype
from mgeo.worker.inference.engine import Engine
from mgeo.worker.inference.model import load_model

log = logging.getLogger(__name__)

_WARMUP = 64


def run(settings: BenchSettings) -> int:
    """`mgeo bench`: the engine against the reference loop, or --host-path, --latency or
    --memory-pressure."""
    plot = settings.plot if settings.plot is not None and str(settings.plot) not in ("", ".") \
        else None
    try:
        if settings.host_path:
            from mgeo.tools.hostpath import plot_host_path, print_host_path, run_host_path

            report = run_host_path(settings)
            show, draw = print_host_path, plot_host_path
        elif settings.latency:
            from mgeo.tools.latency import plot_latency, print_latency, run_latency

            report = run_latency(settings)
            show, draw = print_latency, plot_latency
        elif settings.memory_pressure:
            from mgeo.tools.pressure import print_pressure, run_pressure

            report = run_pressure(settings)
            show, draw = print_pressure, lambda r, p: None
        else:
            report, timings = bench(settings)
            show, draw = _print_table, lambda r, p: _plot(r, timings, p)
    except ValueError as exc:
        print(f"mgeo bench: {exc}", file=sys.stderr)
        return 2
    if plot is not None:
        draw(report, Path(plot))
    if settings.json:
        print(json.dumps(report))
    else:
        show(report)
    return 0 if report.get("ok", True) else 1  # a drill that failed (--memory-pressure)


class _BatchTimes:
    """Records each model batch's seconds (the engine reports them as it cuts batches)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def model_batch(self, pairs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self.seconds.append(seconds)


def bench(s: BenchSettings) -> tuple[dict, dict]:
    """Time the reference loop and the engine on the same pairs; returns (report, timings)."""
    accel = simulated_gpu(s)
    device = accel.name if accel else resolve_device(s.device)
    where = accel.torch_device if accel else device  # where the reference's tensors go
    precision = resolve_precision(s.precision, device)
    # The reference loop runs on this thread with every torch thread, as scripts do; the
    # engine's lanes set their own share in their own threads.
    threads = s.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    warmup = min(_WARMUP, s.pairs)  # a small run (a rehearsal) needs no more than itself
    rows, source = make_pairs(s.pairs + warmup, s.seed, s.pairs_from)
    warm = [(r["addr1"], r["addr2"]) for r in rows[:warmup]]
    pairs = [(r["addr1"], r["addr2"]) for r in rows[warmup:]]
    model_dir, model_desc = bench_model(s)

    # The reference runs at the engine's precision, except int8 and bf16 on a CPU: people run
    # fp32 there, and the engine's distance from fp32 is exactly its accuracy cost.
    lossy_on_cpu = precision == "int8" or (precision == "bf16" and device == "cpu")
    ref_precision = "fp32" if lossy_on_cpu else precision
    reference = Reference(model_dir, where, ref_precision, s.max_length, s.ref_batch)
    engine = Engine.from_settings(s.model_copy(update={
        "model": model_dir, "device": where, "precision": precision, "cache_size": 0}), accel)
    batch_times = _BatchTimes()
    engine.add_observer(batch_times)
    lengths = reference.lengths(pairs)

    reference.score(warm)
    engine.score(warm)
    engine.accel.reset_peak()
    ref_best = eng_best = float("inf")
    for _ in range(s.rounds):
        reference.batch_seconds.clear()
        started = time.perf_counter()
        ref_probs = reference.score(pairs)
        ref_best = min(ref_best, time.perf_counter() - started)
        batch_times.seconds.clear()
        before = engine.stats()
        started = time.perf_counter()
        scored = engine.score(pairs)
        eng_best = min(eng_best, time.perf_counter() - started)
        after = engine.stats()
    peak = engine.accel.peak_memory()

    model_best = min(model_seconds(engine, pairs) for _ in range(s.rounds))
    eng_probs = np.array([[x.probs[label] for label in engine.labels] for x in scored])
    pos = [engine.labels.index(p) for p in engine.positive]
    batches = after["batches"] - before["batches"]
    report = {
        "device": device,
        "device_name": machine_name(device) + (" (a GPU simulated on it)" if accel else ""),
        "precision": precision,
        "reference_precision": ref_precision,
        "pairs": len(pairs),
        "pair_source": source,
        "token_length": _length_stats(lengths),
        "model": model_desc,
        "torch_threads": threads,
        "batch_layout": engine.layout,
        "lanes": engine.lanes,
        "lane_threads": engine.lane_threads,
        "rounds": s.rounds,
        "baseline_pairs_per_s": round(len(pairs) / ref_best, 2),
        "engine_pairs_per_s": round(len(pairs) / eng_best, 2),
        "ratio": round(ref_best / eng_best, 3),
        "model_only_pairs_per_s": round(len(pairs) / model_best, 2),
        "engine_vs_model_only": round(model_best / eng_best, 3),
        **agreement(eng_probs, ref_probs, pos),
        "baseline_padding_efficiency": round(reference.efficiency(lengths), 4),
        "engine_padding_efficiency": round(
            (after["tokens"] - before["tokens"])
            / max(1, after["padded_tokens"] - before["padded_tokens"]), 4),
        "token_budget": engine.token_budget,
        "ref_batch": s.ref_batch,
        "baseline_batches": -(-len(pairs) // s.ref_batch),
        "engine_batches": batches,
        "engine_mean_pairs_per_batch": round(len(pairs) / max(1, batches), 1),
        "baseline_seconds": round(ref_best, 3),
        "engine_seconds": round(eng_best, 3),
        "truncated_pairs": after["truncated"] - before["truncated"],
        "peak_memory_bytes": peak,
        "torch": torch.__version__,
    }
    if precision != "fp32":
        # What the faster number format costs: the same pairs through the model in fp32.
        full = ref_probs if ref_precision == "fp32" else Reference(
            model_dir, where, "fp32", s.max_length, s.ref_batch).score(pairs)
        report["vs_fp32"] = agreement(eng_probs, full, pos)
    timings = {"reference": list(reference.batch_seconds), "engine": list(batch_times.seconds)}
    with engine:  # closed on the way out
        if s.profile is not None and str(s.profile) not in ("", "."):
            from mgeo.tools.profile import profile_engine

            report["profile"] = profile_engine(engine, pairs, Path(s.profile))
    return report, timings


def model_seconds(engine: Engine, pairs: list[tuple[str, str]]) -> float:
    """Seconds the model alone takes for `pairs`: the batches the engine would run, already
    tokenized and on the device, on the engine's runner, timed from the first launch to the
    last result (the bound for `Engine.forward`, which adds the copies to the device and
    back)."""
    prep = engine.prepare(pairs)
    batches = [engine.accel.upload(b.inputs) for b in prep.batches]
    engine.accel.synchronize()

    def run(inputs) -> None:
        with torch.inference_mode():
            engine.logits(inputs).float().softmax(-1)

    started = time.perf_counter()
    engine.runner.map(run, batches)
    engine.accel.synchronize()
    return time.perf_counter() - started


class Reference:
    """The loop found in most examples: fixed-size batches in input order, padding=True."""

    def __init__(self, model_dir: Path, device: str, precision: str, max_length: int,
                 batch: int):
        self.tokenizer, model, self.id2label = load_model(model_dir)
        self.model = model.to(device, torch_dtype(precision))  # `.half()` in fp16 scripts
        self.device, self.max_length, self.batch = device, max_length, batch
        self.batch_seconds: list[float] = []

    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        out = []
        for i in range(0, len(pairs), self.batch):
            started = time.perf_counter()
            chunk = pairs[i:i + self.batch]
            enc = self.tokenizer([a for a, _ in chunk], [b for _, b in chunk], padding=True,
                                 truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            with torch.no_grad():
                logits = self.model(**enc).logits
            out.append(logits.float().softmax(-1).cpu().numpy())
            self.batch_seconds.append(time.perf_counter() - started)
        return np.concatenate(out)

    def lengths(self, pairs: list[tuple[str, str]]) -> list[int]:
        enc = self.tokenizer([a for a, _ in pairs], [b for _, b in pairs], truncation=True,
                             max_length=self.max_length)
        return [len(ids) for ids in enc["input_ids"]]

    def efficiency(self, lengths: list[int]) -> float:
        padded = sum(padded_tokens(lengths[i:i + self.batch])
                     for i in range(0, len(lengths), self.batch))
        return sum(lengths) / padded


def _length_stats(lengths: list[int]) -> dict:
    a = np.array(lengths)
    p = np.percentile(a, [50, 90, 95, 99])
    return {"mean": round(float(a.mean()), 1), "p50": float(p[0]), "p90": float(p[1]),
            "p95": float(p[2]), "p99": float(p[3]), "max": int(a.max())}


def _print_table(r: dict) -> None:
    t = r["token_length"]
    print(f"mgeo bench: {r['pairs']} pairs from {r['pair_source']}")
    print(f"  tokens a pair: mean {t['mean']}, p50 {t['p50']:.0f}, p90 {t['p90']:.0f}, "
          f"p99 {t['p99']:.0f}, max {t['max']}")
    print(f"  model: {r['model']}")
    print(f"  device: {r['device']} ({r['device_name']}), torch threads {r['torch_threads']}; "
          f"engine: {r['batch_layout']} batches, {r['lanes']} lane(s) of "
          f"{r['lane_threads']} thread(s)")
    print()
    print(f"  {'configuration':<44}{'pairs/s':>10}{'padding eff.':>14}{'batches':>9}")
    print(f"  {'reference: batch ' + str(r['ref_batch']) + ', input order, ' + r['reference_precision']:<44}"
          f"{r['baseline_pairs_per_s']:>10.1f}{r['baseline_padding_efficiency']:>14.2f}"
          f"{r['baseline_batches']:>9}")
    print(f"  {'engine: budget ' + str(r['token_budget']) + ' tokens, sorted, ' + r['precision']:<44}"
          f"{r['engine_pairs_per_s']:>10.1f}{r['engine_padding_efficiency']:>14.2f}"
          f"{r['engine_batches']:>9}")
    print(f"  {'model only: same batches, on the device':<44}"
          f"{r['model_only_pairs_per_s']:>10.1f}   (engine at {r['engine_vs_model_only']:.0%})")
    print()
    what = (f"{r['precision']} accuracy cost vs the fp32 reference"
            if r["precision"] != r["reference_precision"]
            else "engine vs reference, same precision")
    print(f"  speed-up {r['ratio']:.2f}x; max |score diff| {r['max_abs_score_diff']:.2e} ({what}); "
          f"label agreement {r['label_agreement']:.1%}")
    if "vs_fp32" in r:
        v = r["vs_fp32"]
        print(f"  {r['precision']} against fp32 on the same pairs: max |score diff| "
              f"{v['max_abs_score_diff']:.2e}, label agreement {v['label_agreement']:.2%} "
              f"({v['label_disagreements']} pairs differ)")
    if r["peak_memory_bytes"] is not None:
        print(f"  peak device memory {r['peak_memory_bytes'] / 2**30:.2f} GiB")
    if "profile" in r:
        p = r["profile"]
        print()
        print(f"  profile ({p['pairs_per_s']:.1f} pairs/s under the profiler; trace {p['trace']}):")
        print("    stages (s): " + ", ".join(f"{k} {v:.3f}" for k, v in p["stage_seconds"].items())
              + f" of {p['wall_seconds']:.3f} wall")
        for op in p["top_ops"]:
            print(f"    {op['share']:>6.1%}  {op['seconds']:>9.4f} s  {op['calls']:>7} calls  "
                  f"{op['op'][:60]}")
        print(f"  limited by {p['limit']}")


def _plot(r: dict, timings: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [f"reference\nbatch {r['ref_batch']}, {r['reference_precision']}",
             f"engine\nbudget {r['token_budget']}, {r['precision']}"]
    rates = [r["baseline_pairs_per_s"], r["engine_pairs_per_s"]]
    bars = left.bar(names, rates, color=["#999999", "#2a7ab9"])
    left.bar_label(bars, fmt="%.1f")
    left.set_ylabel("pairs / s")
    left.set_title(f"Throughput on {r['device']} ({r['ratio']:.2f}x)")
    data = [np.array(timings["reference"]) * 1e3, np.array(timings["engine"]) * 1e3]
    right.boxplot(data, tick_labels=[f"reference\n{r['baseline_batches']} batches",
                                     f"engine\n{r['engine_batches']} batches"])
    right.set_ylabel("batch latency (ms)")
    right.set_title("Batch latency distribution")
    fig.suptitle(f"mgeo bench: {r['pairs']} pairs, {r['device_name']}", fontsize=10)
    save(fig, path)
