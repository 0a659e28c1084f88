"""`mgeo bench --latency`: how long an answer takes when the worker is not saturated.

A worker (default settings) on the embedded broker:

1. capacity: a backlog of requests is drained; the rate is read from the answers' record
   timestamps after the first 10%;
2. then a steady producer at 1/10, 1/3 and 2/3 of that capacity (--latency-shares) for
   --phase-seconds each, each phase on fresh topics of 6 partitions with a fresh worker that
   has answered a probe, one request at a time as `bench/latency_client.py` sends them. A
   request's latency is its answer's record timestamp minus its own (both set when the record
   is produced, on this machine's clock); p50/p90/p99 per phase, beside the same percentiles
   read from the worker's own `mgeo_end_to_end_seconds` histogram over the phase.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

from mgeo.tools.bench_settings import BenchSettings

PHASES = (0.1, 1 / 3, 2 / 3)
PARTITIONS = 6  # as bench/latency_client.py (issue 23's method)


def percentile(values: list[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo = int(k)
    return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (k - lo)


def histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) pairs: linear
    inside the bucket the quantile falls in."""
    total = buckets[-1][1]
    if total <= 0:
        return float("nan")
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return prev_bound
            span = count - prev_count
            return prev_bound + (bound - prev_bound) * ((rank - prev_count) / span if span else 0)
        prev_bound, prev_count = bound, count
    return prev_bound


def scrape_e2e(port: int) -> list[tuple[float, float]]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for fam in text_string_to_metric_families(text):
        if fam.name == "mgeo_end_to_end_seconds":
            return sorted((float(s.labels["le"]), s.value) for s in fam.samples
                          if s.name.endswith("_bucket"))
    raise RuntimeError("the worker exports no mgeo_end_to_end_seconds")


def run_latency(s: BenchSettings) -> dict:
    from mgeo.tools.workload import make_pairs
    from mgeo.tools.broker import EmbeddedBroker, free_port
    from mgeo.tools.harness import Answers, Topics, Worker, paced, prefill, steady_rate
    from mgeo.worker.inference.device import resolve_device
    from mgeo.worker.inference.model import default_model_dir

    device = resolve_device(s.device)
    model = Path(s.model) if s.model else default_model_dir()
    backlog_n = s.e2e_pairs or s.pairs
    rows, source = make_pairs(backlog_n + 50_000, s.seed, s.pairs_from)
    pairs = [(r["addr1"], r["addr2"]) for r in rows]
    # Phases reuse these texts under new ids when they need more (the cache is off).
    backlog, fresh = pairs[:backlog_n], itertools.cycle(pairs[backlog_n:])
    report: dict = {"model": str(model), "device": device, "pair_source": source,
                    "phase_seconds": s.phase_seconds, "partitions": PARTITIONS, "phases": []}
    with EmbeddedBroker() as broker:

        def start(tag: str) -> tuple[Topics, Worker, Answers, int]:
            topics = Topics.fresh(broker.bootstrap, PARTITIONS, tag)
            port = free_port()
            worker = Worker(broker.bootstrap, topics, model, device=device, metrics_port=port,
                            precision=s.precision)
            worker.wait_assigned()
            return topics, worker, Answers(broker.bootstrap, topics.output, PARTITIONS), port

        topics, worker, answers, _ = start("capacity")
        try:
            since_ms = time.time() * 1000
            prefill(broker.bootstrap, topics.input, backlog, prefix="b")
            stamps = answers.read(len(backlog), timeout=120)
            capacity = steady_rate(list(stamps.values()), since_ms=since_ms)
        finally:
            answers.close()
            report["exit_code"] = worker.stop()
        if not capacity > 0:
            raise RuntimeError(f"no capacity measured: {len(stamps)} of {len(backlog)} "
                               "backlog pairs answered")
        report["capacity_pairs_per_s"] = round(capacity, 1)
        report["backlog_pairs"] = len(backlog)
        for k, share in enumerate(s.latency_shares or PHASES):
            # Each load on fresh topics and a fresh worker, as bench/latency_client.py runs
            # it: what a topic already holds costs the embedded broker at every read
            # (bench/broker_cost.py), so a phase after another would measure the first's
            # leftovers too.
            topics, worker, answers, port = start(f"latency-{k}")
            try:
                paced(broker.bootstrap, topics.input, [next(fresh)], 1.0, f"probe{k}-")
                if not answers.read(1, timeout=120):
                    raise RuntimeError("the probe request was not answered")
                rate = share * capacity
                n = max(20, int(rate * s.phase_seconds))
                phase_pairs = [next(fresh) for _ in range(n)]
                before = scrape_e2e(port)
                sent = paced(broker.bootstrap, topics.input, phase_pairs, rate, f"p{k}-")
                stamps = answers.read(1 + n, timeout=60)
                after = scrape_e2e(port)
            finally:
                answers.close()
                code = worker.stop()
            report["exit_code"] = report["exit_code"] or code
            waits = [(stamps[rid.encode()] - ts) / 1000 for rid, ts in sent.items()
                     if rid.encode() in stamps]
            delta = [(b, a - c) for (b, a), (_, c) in zip(after, before)]
            report["phases"].append({
                "share_of_capacity": round(share, 3), "rate_pairs_per_s": round(rate, 1),
                "requests": n, "answered": len(waits),
                "client": {f"p{int(q * 100)}": round(percentile(waits, q), 4)
                           for q in (0.5, 0.9, 0.99)},
                "worker_histogram": {f"p{int(q * 100)}": round(histogram_quantile(delta, q), 4)
                                     for q in (0.5, 0.9, 0.99)}})
    return report


def print_latency(r: dict) -> None:
    print(f"mgeo bench --latency: model {r['model']} on {r['device']}")
    print(f"  capacity (backlog of {r['backlog_pairs']} drained): "
          f"{r['capacity_pairs_per_s']:.0f} pairs/s")
    print()
    print(f"  {'load':<22}{'requests':>9}   {'client p50/p90/p99 (ms)':<26}"
          f"{'worker histogram p50/p90/p99 (ms)'}")
    for p in r["phases"]:
        c, w = p["client"], p["worker_histogram"]
        print(f"  {p['share_of_capacity']:.0%} = {p['rate_pairs_per_s']:>7.0f}/s"
              f"{p['requests']:>10}   "
              f"{c['p50'] * 1e3:>6.0f} {c['p90'] * 1e3:>6.0f} {c['p99'] * 1e3:>6.0f}"
              f"{'':<7}{w['p50'] * 1e3:>6.0f} {w['p90'] * 1e3:>6.0f} {w['p99'] * 1e3:>6.0f}")


def plot_latency(r: dict, path: Path) -> None:
    from mgeo.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    x = [p["share_of_capacity"] * 100 for p in r["phases"]]
    for q, style in (("p50", "-o"), ("p90", "-s"), ("p99", "-^")):
        ax.plot(x, [p["client"][q] * 1e3 for p in r["phases"]], style, label=f"client {q}")
        ax.plot(x, [p["worker_histogram"][q] * 1e3 for p in r["phases"]], style, alpha=0.35,
                label=f"worker histogram {q}")
    ax.set_xlabel("load, % of measured capacity")
    ax.set_ylabel("request → answer (ms)")
    ax.set_title(f"Latency under load ({r['capacity_pairs_per_s']:.0f} pairs/s capacity, "
                 f"{r['device']})", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    save(fig, path)
