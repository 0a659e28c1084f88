"""Prometheus metrics and health endpoints of a worker, on one HTTP port.

GET /metrics  Prometheus exposition; every name starts with `mgeo_`, labels are low-cardinality
              (`kind` of a rebalance or of GPU memory, input `partition`).
GET /healthz  liveness: 200 while the Kafka loop keeps ticking, 503 once it has not ticked for
              `liveness_timeout` seconds (a stuck loop, not merely a live process).
GET /readyz   readiness: 200 once the model is loaded and the loop runs.

Counters and gauges are read from the loop's `Stats` and the engine's `stats()` at scrape time,
so the hot path pays nothing for them. Histograms are observed through the loop's observer
hooks; batch sizes are those of the engine's model batches (each inference call may run
several under its token budget), read from the engine's `recent_batches` record.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("mgeo.metrics")

_SIZE_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_TOKEN_BUCKETS = (256, 1024, 4096, 8192, 16384, 32768, 65536, 131072, 262144, 524288)
_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def torch_gpu_memory() -> dict[str, int] | None:
    """Bytes of GPU memory this process holds through torch: `allocated` by live tensors and
    `reserved` by the caching allocator (what the device sees). None without an initialised
    CUDA context. torch is never imported here: a CPU-only worker reports nothing."""
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
    """Everything a worker exports. `observer` plugs into the loop; `engine_stats` is polled.

    `engine` is the object whose `recent_batches` (pairs, padded tokens, seconds) records each
    model batch; by default the owner of `engine_stats` when that is a bound method.
    """

    def __init__(self, stats, engine_stats: Callable[[], dict] | None = None,
                 inflight: Callable[[], int] | None = None, *, engine=None,
                 gpu_memory: Callable[[], dict[str, int] | None] = torch_gpu_memory):
        self.stats = stats
        self.engine_stats = engine_stats or (lambda: {})
        self.inflight = inflight or (lambda: 0)
        self.engine = engine if engine is not None else getattr(engine_stats, "__self__", None)
        self.gpu_memory = gpu_memory
        self.lag: dict[str, int] = {}  # "topic/partition" -> consumer lag
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.batch_pairs = Histogram("mgeo_batch_pairs", "Pairs per model batch",
                                     buckets=_SIZE_BUCKETS, registry=self.registry)
        self.batch_tokens = Histogram("mgeo_batch_tokens",
                                      "Padded tokens per model batch (rows x padded width)",
                                      buckets=_TOKEN_BUCKETS, registry=self.registry)
        self.inference_seconds = Histogram(
            "mgeo_inference_seconds",
            "Seconds of one inference call (tokenizing and every model batch of it)",
            buckets=_SECONDS_BUCKETS, registry=self.registry)
        self.e2e_seconds = Histogram(
            "mgeo_end_to_end_seconds",
            "Seconds from a request's Kafka timestamp to its answer's delivery",
            buckets=_SECONDS_BUCKETS, registry=self.registry)
        self._last_tokens = 0
        self._last_record = None

    # -- observer hooks, called by the loop thread -------------------------------------------

    def batch(self, pairs: int, seconds: float) -> None:
        self.inference_seconds.observe(seconds)
        records = self._new_model_batches()
        if records is None:  # an engine without per-batch records: the call is the batch
            self.batch_pairs.observe(pairs)
            tokens = self.engine_stats().get("padded_tokens")
            if tokens is not None:
                self.batch_tokens.observe(max(0, tokens - self._last_tokens))
                self._last_tokens = tokens
            return
        for rows, padded, _ in records:
            self.batch_pairs.observe(rows)
            self.batch_tokens.observe(padded)

    def _new_model_batches(self) -> list[tuple[int, int, float]] | None:
        """The engine's model batches recorded since the last call (None: it records none)."""
        records = getattr(self.engine, "recent_batches", None)
        if records is None:
            return None
        try:
            # One C-level copy under the GIL: safe while the inference thread appends.
            snapshot = list(records)
        except RuntimeError:
            return []
        start = 0
        if self._last_record is not None:
            for i in range(len(snapshot) - 1, -1, -1):
                if snapshot[i] is self._last_record:
                    start = i + 1
                    break
        if snapshot:
            self._last_record = snapshot[-1]
        return snapshot[start:]

    def answered(self, timestamp_ms: int) -> None:
        if timestamp_ms > 0:
            self.e2e_seconds.observe(max(0.0, time.time() - timestamp_ms / 1000))

    def librdkafka_stats(self, raw: str) -> None:
        """librdkafka's statistics callback: keep each assigned partition's consumer lag."""
        try:
            data = json.loads(raw)
        except ValueError:
            return
        lag = {}
        for topic, t in (data.get("topics") or {}).items():
            for pid, p in (t.get("partitions") or {}).items():
                if pid == "-1" or p.get("fetch_state") not in ("active", "paused"):
                    continue
                value = p.get("consumer_lag", -1)  # against the committed offset, as KEDA sees it
                if value is not None and value >= 0:
                    lag[f"{topic}/{pid}"] = value
        self.lag = lag

    # -- custom collector: read the counters at scrape time ----------------------------------

    def collect(self):
        s = self.stats
        counters = [
            ("mgeo_messages_consumed", "Messages read from the input topic", s.consumed),
            ("mgeo_pairs_scored", "Pairs scored by the model", s.scored),
            ("mgeo_error_results", "Requests answered with an error result", s.error_results),
            ("mgeo_dead_letters", "Messages sent to the dead-letter topic", s.dead_letters),
            ("mgeo_answers_delivered", "Answers confirmed delivered", s.answered),
            ("mgeo_delivery_retries", "Answers re-sent after a failed delivery",
             s.delivery_retries),
            ("mgeo_commits", "Offset commits (exactly-once: committed transactions)", s.commits),
            ("mgeo_batches", "Inference calls", s.batches),
        ]
        aborts = getattr(s, "aborts", None)
        if aborts is not None:
            counters.append(("mgeo_transaction_aborts",
                             "Aborted transactions (exactly-once), their inputs read again",
                             aborts))
        for name, doc, value in counters:
            yield _counter(name, doc, value)
        reb = CounterMetricFamily("mgeo_rebalances", "Rebalance events", labels=["kind"])
        reb.add_metric(["assigned"], s.assignments)
        reb.add_metric(["revoked"], s.revocations)
        reb.add_metric(["lost"], s.losses)
        yield reb
        yield _gauge("mgeo_inflight_requests", "Requests read but not yet answered",
                     self.inflight())
        yield _gauge("mgeo_assigned_partitions", "Input partitions assigned", len(s.assigned))
        lag = GaugeMetricFamily("mgeo_consumer_lag", "Messages behind the end of a partition "
                                "(librdkafka statistics)", labels=["partition"])
        for key, value in sorted(self.lag.items()):
            lag.add_metric([key.rsplit("/", 1)[1]], value)
        yield lag
        yield _gauge("mgeo_consumer_lag_total", "Sum of consumer lag", sum(self.lag.values()))

        es = self.engine_stats()
        if es.get("token_budget") is not None:
            yield _gauge("mgeo_token_budget",
                         "Current padded-token budget of a model batch (shrinks on OOM)",
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
                ("mgeo_padded_tokens", "Padded tokens run through the model",
                 es.get("padded_tokens")),
                ("mgeo_tokenize_seconds", "Seconds spent tokenizing (on the helper thread, "
                 "overlapped with the model); near the inference seconds, the host is the limit",
                 es.get("tokenize_seconds"))):
            if value is not None:
                yield _counter(name, doc, value)
        memory = self.gpu_memory()
        if memory:
            g = GaugeMetricFamily("mgeo_gpu_memory_bytes",
                                  "GPU memory held through torch: allocated by tensors, or "
                                  "reserved by the caching allocator", labels=["kind"])
            for kind, value in sorted(memory.items()):
                g.add_metric([kind], float(value))
            yield g
        yield _gauge("mgeo_ready", "1 once the model is loaded and the loop runs",
                     1.0 if s.ready else 0.0)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc)
    c.add_metric([], float(value))
    return c


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc)
    g.add_metric([], float(value))
    return g


class HealthServer:
    """/metrics, /healthz and /readyz on a background thread."""

    def __init__(self, metrics: Metrics, port: int, liveness_timeout: float,
                 host: str = "0.0.0.0"):
        self.metrics = metrics
        self.liveness_timeout = liveness_timeout
        handler = self._handler()
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        log.info("metrics and health on :%d (/metrics, /healthz, /readyz)", self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def live(self) -> tuple[bool, str]:
        idle = time.monotonic() - self.metrics.stats.last_tick
        if idle > self.liveness_timeout:
            return False, f"the Kafka loop has not ticked for {idle:.0f}s"
        return True, "ok"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body = generate_latest(server.metrics.registry)
                    self._send(200, body, CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    ok, why = server.live()
                    self._send(200 if ok else 503, why.encode() + b"\n")
                elif path == "/readyz":
                    ok = server.metrics.stats.ready
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
                else:
                    self._send(404, b"try /metrics, /healthz or /readyz\n")

            def _send(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # no per-request log spam
                pass

        return Handler
