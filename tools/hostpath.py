"""`mgeo bench --host-path`: can one worker feed a fast GPU?

With a model whose compute is negligible (no transformer layer, the real tokenizer), what is
measured is everything around the model: tokenizing, batching, Kafka, encoding results. In one
run, on the same pairs:

(a) the raw Rust tokenizer, `tokenizers.Tokenizer.encode_batch(pairs)` with truncation, on
    every core: the bar the host path is held to;
(b) the `transformers` tokenizer call most scripts use (padding, tensors), for reference;
(c) the engine alone: `Engine.score_rows` on batches of --max-batch-pairs;
(d) one `mgeo worker` end to end through the embedded broker: the topic is filled first, and
    the rate is read from the answers' record timestamps after the first 10% (start-up and
    the group join do not count); then the same with several worker processes where the
    cores allow.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from mgeo.tools.bench_settings import BenchSettings

log = logging.getLogger(__name__)


def run_host_path(s: BenchSettings) -> dict:
    from transformers import AutoTokenizer

    from mgeo.tools.workload import make_pairs
    from mgeo.tools.models import nearly_free
    from mgeo.worker.inference.device import resolve_device
    from mgeo.worker.inference.engine import Engine

    device = resolve_device(s.device)
    rows, source = make_pairs(s.pairs, s.seed, s.pairs_from)
    pairs = [(r["addr1"], r["addr2"]) for r in rows]
    model, model_desc = (Path(s.model), str(s.model)) if s.model else nearly_free(s.seed)
    tok = AutoTokenizer.from_pretrained(model)
    report: dict = {"pairs": len(pairs), "pair_source": source, "model": model_desc,
                    "device": device, "cores": os.cpu_count(), "max_length": s.max_length}

    rust = tok.backend_tokenizer
    rust.enable_truncation(s.max_length)
    rust.no_padding()
    report["raw_tokenizer_pairs_per_s"] = _best(s.rounds, len(pairs),
                                                lambda: rust.encode_batch(pairs))
    chunk = s.max_batch_pairs

    def hf_call():
        for i in range(0, len(pairs), chunk):
            part = pairs[i:i + chunk]
            tok([a for a, _ in part], [b for _, b in part], truncation=True,
                max_length=s.max_length, padding=True, return_tensors="pt")

    report["transformers_call_pairs_per_s"] = _best(s.rounds, len(pairs), hf_call)
    engine = Engine.from_settings(s.model_copy(update={"model": model, "device": device,
                                                       "cache_size": 0}))

    def engine_pass():
        for i in range(0, len(pairs), chunk):
            engine.score_rows(pairs[i:i + chunk])

    engine.score_rows(pairs[:256])
    report["engine_pairs_per_s"] = _best(s.rounds, len(pairs), engine_pass)
    report["engine_tokenizer_fallbacks"] = engine.stats()["tokenizer_fallbacks"]
    report["workers"] = [_end_to_end(s, model, pairs, device, n) for n in _scales(s)]
    raw = report["raw_tokenizer_pairs_per_s"]
    report["engine_vs_raw_tokenizer"] = round(report["engine_pairs_per_s"] / raw, 3)
    for w in report["workers"]:
        w["vs_raw_tokenizer"] = round(w["pairs_per_s"] / raw, 3)
    return report


def _scales(s: BenchSettings) -> list[int]:
    if s.processes_list:
        return list(s.processes_list)
    cores = os.cpu_count() or 1
    return sorted({1, min(cores, 2), min(cores, 4)} if cores > 1 else {1})


def _best(rounds: int, n: int, fn) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return round(n / best, 1)


def _end_to_end(s: BenchSettings, model: Path, pairs, device: str, processes: int) -> dict:
    from mgeo.tools.broker import EmbeddedBroker
    from mgeo.tools.harness import Answers, Topics, Worker, prefill, steady_rate

    n = s.e2e_pairs or len(pairs)
    stream = [pairs[i % len(pairs)] for i in range(n)]
    partitions = max(6, 2 * processes)
    with EmbeddedBroker() as broker:
        topics = Topics.fresh(broker.bootstrap, partitions)
        started = time.perf_counter()
        prefill(broker.bootstrap, topics.input, stream)
        prefill_s = time.perf_counter() - started
        extra = {"threads": s.threads} if s.threads else {}
        worker = Worker(broker.bootstrap, topics, model, device=device, processes=processes,
                        precision=s.precision, max_length=s.max_length,
                        max_batch_pairs=s.max_batch_pairs, **extra)
        try:
            worker.wait_assigned()
            since_ms = time.time() * 1000
            answers = Answers(broker.bootstrap, topics.output, partitions)
            stamps = answers.read(n, timeout=120)
            answers.close()
        finally:
            code = worker.stop()
    got = len(stamps)
    rate = steady_rate(list(stamps.values()), since_ms=since_ms)
    return {"processes": processes, "partitions": partitions, "answers": got,
            "complete": got == n, "exit_code": code, "prefill_seconds": round(prefill_s, 2),
            "pairs_per_s": round(rate, 1)}


def print_host_path(r: dict) -> None:
    raw = r["raw_tokenizer_pairs_per_s"]
    print(f"mgeo bench --host-path: {r['pairs']} pairs from {r['pair_source']}")
    print(f"  model: {r['model']}; device {r['device']}, {r['cores']} cores")
    print()
    print(f"  {'what':<58}{'pairs/s':>10}{'x raw':>8}")
    lines = [("(a) raw tokenizer: Tokenizer.encode_batch(pairs), all cores", raw),
             ("(b) transformers call: padding, tensors", r["transformers_call_pairs_per_s"]),
             ("(c) engine alone: Engine.score_rows", r["engine_pairs_per_s"])]
    lines += [(f"(d) mgeo worker end to end, {w['processes']} process"
               f"{'es' if w['processes'] > 1 else ''}, {w['partitions']} partitions",
               w["pairs_per_s"]) for w in r["workers"]]
    for what, rate in lines:
        print(f"  {what:<58}{rate:>10.0f}{rate / raw:>8.2f}")
    incomplete = [w for w in r["workers"] if not w["complete"]]
    for w in incomplete:
        print(f"  ! {w['processes']} processes: only {w['answers']} answers (exit code "
              f"{w['exit_code']})")


def plot_host_path(r: dict, path: Path) -> None:
    from mgeo.plots import bar_chart

    names = ["raw tokenizer", "transformers\ncall", "engine"] + [
        f"worker\n×{w['processes']}" for w in r["workers"]]
    rates = [r["raw_tokenizer_pairs_per_s"], r["transformers_call_pairs_per_s"],
             r["engine_pairs_per_s"]] + [w["pairs_per_s"] for w in r["workers"]]
    bar_chart(path, names, rates, ylabel="pairs / s",
              title=f"Host path, nearly free model, {r['cores']} cores "
                    f"({r['pairs']} pairs)",
              reference=r["raw_tokenizer_pairs_per_s"], reference_label="raw tokenizer")
