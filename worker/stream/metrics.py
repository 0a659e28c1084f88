"""Prometheus metrics of a worker.

Every name starts with `mgeo_`; labels are low-cardinality (`kind` of a rebalance or of GPU
memory, input `partition`, pipeline `stage`). Counters and gauges are read at scrape time from
the loop's `Stats`, the engine's `stats()` and the inference stage's queue depths, so the hot
path pays nothing for them. Histograms record events as they are reported: each model batch by
the engine (`model_batch`, where batches are cut), each inference call and each answer's
end-to-end time by the stream (`scored`, `published`).

The end-to-end time of an answer is from its request's Kafka timestamp to the moment it is
produced, which is the timestamp its own record carries: what a client that compares the two
records measures.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from bisect import bisect_left
from typing import Callable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from mgeo.worker.stream.events import Stats

log = logging.getLogger("mgeo.metrics")

SIZE_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
TOKEN_BUCKETS = (256, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.065,
                   0.08, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 1.5, 2,
                   2.5, 5, 10, 30, 60, 120)


class Histogram:
    """A histogram fed by one thread, many values at a time; read at scrape time."""

    def __init__(self, name: str, doc: str, buckets: Sequence[float]):
        self.name, self.doc, self.bounds = name, doc, tuple(buckets)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Sequence[float]) -> None:
        counts, bounds = self.counts, self.bounds
        for v in values:
            counts[bisect_left(bounds, v)] += 1
        self.sum += sum(values)

    def family(self) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for bound, count in zip(self.bounds + (float("inf"),), list(self.counts)):
            total += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return HistogramMetricFamily(self.name, self.doc, buckets=cumulative,
                                     sum_value=self.sum)


def torch_gpu_memory() -> dict[str, int] | None:
    """Bytes of GPU memory this process holds through torch: `allocated` by live tensors and
    `reserved` by the caching allocator (what the device sees). None without an initialised
    CUDA context. torch is never imported here."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        if not torch.cuda.is_initialized():
            return None
        return {"allocated": int(torch.cuda.memory_allocated()),
                "reserved": int(torch.cuda.memory_reserved())}
    except Exception:  # noqa: BLE001 - a scrape must never fail on a device query
        return None


class Metrics:
    """Everything a worker exports; an observer of the stream and of the engine."""

    def __init__(self, stats: Stats, engine_stats: Callable[[], dict] | None = None,
                 inflight: Callable[[], int] | None = None, *,
                 queues: Callable[[], dict[str, int]] | None = None,
                 gpu_memory: Callable[[], dict[str, int] | None] = torch_gpu_memory):
        self.stats = stats
        self.engine_stats = engine_stats or (lambda: {})
        self.inflight = inflight or (lambda: 0)
        self.queues = queues or (lambda: {})
        self.gpu_memory = gpu_memory
        self.lag: dict[str, int] = {}  # "topic/partition" -> consumer lag
        self._lock = threading.Lock()  # model batches come from the engine's thread
        self.batch_pairs = Histogram("mgeo_batch_pairs", "Pairs per model batch", SIZE_BUCKETS)
        self.batch_tokens = Histogram("mgeo_batch_tokens",
                                      "Tokens the model computes per batch: rows x padded width, or the real tokens of a packed batch",
                                      TOKEN_BUCKETS)
        self.inference_seconds = Histogram(
            "mgeo_inference_seconds",
            "Seconds of one inference call (preparing, running and encoding a batch)",
            SECONDS_BUCKETS)
        self.e2e_seconds = Histogram(
            "mgeo_end_to_end_seconds",
            "Seconds from a request's Kafka timestamp to its answer being produced (the "
            "answer record's timestamp)", SECONDS_BUCKETS)
        self.registry = CollectorRegistry()
        self.registry.register(self)

    # -- events ------------------------------------------------------------------------------

    def model_batch(self, pairs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        with self._lock:
            self.batch_pairs.observe(pairs)
            self.batch_tokens.observe(padded_tokens)

    def scored(self, pairs: int, seconds: float) -> None:
        self.inference_seconds.observe(seconds)

    def published(self, timestamps_ms: Sequence[int], now: float) -> None:
        ms = now * 1000
        self.e2e_seconds.observe_many([max(0.0, (ms - t) / 1000) for t in timestamps_ms
                                       if t > 0])

    def librdkafka_stats(self, raw: str) -> None:
        """librdkafka's statistics callback: keep the consumer lag of each partition the loop
        holds (its `Stats.assigned`), against the committed offset, as KEDA sees it."""
        try:
            data = json.loads(raw)
        except ValueError:
            return
        held = set(self.stats.assigned)
        lag = {}
        for topic, t in (data.get("topics") or {}).items():
            for pid, p in (t.get("partitions") or {}).items():
                if pid == "-1" or (topic, int(pid)) not in held:
                    continue
                value = partition_lag(p)
                if value is not None:
                    lag[f"{topic}/{pid}"] = value
        self.lag = lag

    # -- custom collector: read the counters at scrape time ----------------------------------

    def collect(self):
        s = self.stats
        for name, doc, value in (
                ("mgeo_messages_consumed", "Messages read from the input topic", s.consumed),
                ("mgeo_pairs_scored", "Results delivered (exactly-once: committed)", s.scored),
                ("mgeo_error_results", "Error results delivered (exactly-once: committed)",
                 s.error_results),
                ("mgeo_dead_letters", "Dead letters delivered (exactly-once: committed)",
                 s.dead_letters),
                ("mgeo_answers_delivered", "Answers delivered (exactly-once: committed)",
                 s.answered),
                ("mgeo_answers_substituted", "Answers replaced by a bounded substitute after a "
                 "permanent delivery error", s.substituted),
                ("mgeo_delivery_retries", "Answers re-sent after a transient delivery error",
                 s.delivery_retries),
                ("mgeo_commits", "Offset commits (exactly-once: committed transactions)",
                 s.commits),
                ("mgeo_transaction_aborts", "Aborted transactions (exactly-once), their inputs "
                 "read again", s.aborts),
                ("mgeo_batches", "Inference calls", s.batches)):
            yield _counter(name, doc, value)
        reb = CounterMetricFamily("mgeo_rebalances", "Rebalance events", labels=["kind"])
        reb.add_metric(["assigned"], s.assignments)
        reb.add_metric(["revoked"], s.revocations)
        reb.add_metric(["lost"], s.losses)
        yield reb
        yield _gauge("mgeo_inflight_requests", "Requests read but not yet answered",
                     self.inflight())
        queues = GaugeMetricFamily("mgeo_stage_queue", "Work waiting at each stage of the "
                                   "inference pipeline (intake: requests; prepared, scored: "
                                   "batches)", labels=["stage"])
        for stage, depth in sorted(self.queues().items()):
            queues.add_metric([stage], depth)
        yield queues
        yield _gauge("mgeo_assigned_partitions", "Input partitions assigned", len(s.assigned))
        # A stalled partition is not fetched, so librdkafka's figures for it stand still: the
        # broker's, taken when the stall was judged, are the truth.
        lags = {**self.lag, **{f"{t}/{p}": n for (t, p), n in s.stalled.items()}}
        lag = GaugeMetricFamily("mgeo_consumer_lag", "Messages behind the end of a partition "
                                "(librdkafka statistics; the broker's figure for a stalled "
                                "partition)", labels=["partition"])
        for key, value in sorted(lags.items()):
            lag.add_metric([key.rsplit("/", 1)[1]], value)
        yield lag
        yield _gauge("mgeo_consumer_lag_total", "Sum of consumer lag", sum(lags.values()))
        yield _gauge("mgeo_partitions_stalled",
                     "Partitions the worker holds with messages to read and has not read for "
                     "--liveness-timeout seconds though not paused (a stuck consumer: /healthz "
                     "fails)", len(s.stalled))
        yield _gauge("mgeo_loop_last_tick_timestamp_seconds",
                     "Unix time of the Kafka loop's last tick (a stalled loop stops it)",
                     s.last_tick_unix)

        es = self.engine_stats()
        if es.get("token_budget") is not None:
            yield _gauge("mgeo_token_budget",
                         "Current token budget of a model batch (padded tokens, or real ones when packed; shrinks on OOM)",
                         es["token_budget"])
        if es.get("cache_hit_rate") is not None:
            yield _gauge("mgeo_cache_hit_ratio",
                         "Share of cache lookups served from the cache since start",
                         es["cache_hit_rate"])
        for name, doc, value in (
                ("mgeo_oom_retries", "Model batches retried smaller after running out of memory",
                 es.get("oom_retries")),
                ("mgeo_cache_hits", "Cache lookups served from the cache", es.get("cache_hits")),
                ("mgeo_cache_lookups", "Cache lookups (hits and misses)",
                 None if es.get("cache_hits") is None
                 else es["cache_hits"] + es.get("cache_misses", 0)),
                ("mgeo_tokens", "Real (unpadded) tokens run through the model", es.get("tokens")),
                ("mgeo_padded_tokens", "Tokens computed by the model, padding included (equal to the real ones when packed)",
                 es.get("padded_tokens")),
                ("mgeo_tokenize_seconds", "Seconds spent preparing batches (tokenizing, "
                 "padding) on the prepare thread, overlapped with the model",
                 es.get("tokenize_seconds"))):
            if value is not None:
                yield _counter(name, doc, value)
        memory = self.gpu_memory()
        if memory is None and es.get("device") == "cpu":
            memory = {"allocated": 0, "reserved": 0}  # the model holds no GPU memory
        if memory:
            g = GaugeMetricFamily("mgeo_gpu_memory_bytes",
                                  "GPU memory held through torch: allocated by tensors, or "
                                  "reserved by the caching allocator (0 when the model runs "
                                  "on the CPU)", labels=["kind"])
            for kind, value in sorted(memory.items()):
                g.add_metric([kind], float(value))
            yield g
        with self._lock:
            families = [h.family() for h in (self.batch_pairs, self.batch_tokens)]
        yield from families
        yield self.inference_seconds.family()
        yield self.e2e_seconds.family()
        yield _gauge("mgeo_ready", "1 once the model is loaded and the loop runs",
                     1.0 if s.ready else 0.0)


def partition_lag(p: dict) -> int | None:
    """A partition's lag from its librdkafka statistics. librdkafka gives -1 while nothing is
    committed (a new group, or a partition it never fetched since its assignment): there the
    lag is the whole log from its start, which is where the worker reads from
    (auto.offset.reset=earliest). None when the end of the log is unknown."""
    value = p.get("consumer_lag", -1)
    if value is not None and value >= 0:
        return value
    end = p.get("ls_offset", -1)  # read_committed: the last stable offset
    if end is None or end < 0:
        end = p.get("hi_offset", -1)
    start = p.get("committed_offset", -1)
    if start is None or start < 0:
        start = p.get("lo_offset", -1)
    if end is None or start is None or end < 0 or start < 0:
        return None
    return max(0, end - start)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], float(value))
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], float(value))
    return g
