"""Prometheus metrics and health endpoints of a worker, on one HTTP port.

GET /metrics  Prometheus exposition; every name starts with `mgeo_`, labels are low-cardinality.
GET /healthz  liveness: 200 while the Kafka loop keeps ticking, 503 once it has not ticked for
              `liveness_timeout` seconds (a stuck loop, not merely a live process).
GET /readyz   readiness: 200 once the model is loaded and the loop runs.

Counters are read from the loop's `Stats` at scrape time, so the hot path pays nothing for them;
histograms are observed through the loop's observer hooks.
"""

from __future__ import annotations

import json
import logging
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


class Metrics:
    """Everything a worker exports. `observer` plugs into the loop; `engine_stats` is polled."""

    def __init__(self, stats, engine_stats: Callable[[], dict] | None = None,
                 inflight: Callable[[], int] | None = None):
        self.stats = stats
        self.engine_stats = engine_stats or (lambda: {})
        self.inflight = inflight or (lambda: 0)
        self.lag: dict[str, int] = {}  # "topic/partition" -> consumer lag
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self.batch_pairs = Histogram("mgeo_batch_pairs", "Pairs per inference call",
                                     buckets=_SIZE_BUCKETS, registry=self.registry)
        self.batch_tokens = Histogram("mgeo_batch_tokens", "Padded tokens per inference call",
                                      buckets=_TOKEN_BUCKETS, registry=self.registry)
        self.inference_seconds = Histogram("mgeo_inference_seconds",
                                           "Seconds of one inference call",
                                           buckets=_SECONDS_BUCKETS, registry=self.registry)
        self.e2e_seconds = Histogram(
            "mgeo_end_to_end_seconds",
            "Seconds from a request's Kafka timestamp to its answer's delivery",
            buckets=_SECONDS_BUCKETS, registry=self.registry)
        self._last_tokens = 0

    # -- observer hooks, called by the loop thread -------------------------------------------

    def batch(self, pairs: int, seconds: float) -> None:
        self.batch_pairs.observe(pairs)
        self.inference_seconds.observe(seconds)
        tokens = self.engine_stats().get("padded_tokens")
        if tokens is not None:
            self.batch_tokens.observe(max(0, tokens - self._last_tokens))
            self._last_tokens = tokens

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
            ("mgeo_commits", "Offset commits", s.commits),
            ("mgeo_batches", "Inference calls", s.batches),
        ]
        for name, doc, value in counters:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c
        reb = CounterMetricFamily("mgeo_rebalances", "Rebalance events", labels=["kind"])
        reb.add_metric(["assigned"], s.assignments)
        reb.add_metric(["revoked"], s.revocations)
        reb.add_metric(["lost"], s.losses)
        yield reb
        g = GaugeMetricFamily("mgeo_inflight_requests", "Requests read but not yet answered")
        g.add_metric([], self.inflight())
        yield g
        g = GaugeMetricFamily("mgeo_assigned_partitions", "Input partitions assigned")
        g.add_metric([], len(s.assigned))
        yield g
        lag = GaugeMetricFamily("mgeo_consumer_lag", "Messages behind the end of a partition "
                                "(librdkafka statistics)", labels=["partition"])
        for key, value in sorted(self.lag.items()):
            lag.add_metric([key.rsplit("/", 1)[1]], value)
        yield lag
        total = GaugeMetricFamily("mgeo_consumer_lag_total", "Sum of consumer lag")
        total.add_metric([], sum(self.lag.values()))
        yield total
        es = self.engine_stats()
        for key, name, doc in (
                ("token_budget", "mgeo_token_budget", "Current padded-token budget a batch"),
                ("gpu_memory_bytes", "mgeo_gpu_memory_bytes", "GPU memory allocated by torch"),
                ("cache_hit_rate", "mgeo_cache_hit_ratio", "Share of pairs served from cache")):
            if es.get(key) is not None:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(es[key]))
                yield g
        for key, name, doc in (("oom_retries", "mgeo_oom_retries", "CUDA OOM batch retries"),
                               ("cache_hits", "mgeo_cache_hits", "Pairs served from cache")):
            if es.get(key) is not None:
                c = CounterMetricFamily(name, doc)
                c.add_metric([], float(es[key]))
                yield c
        up = GaugeMetricFamily("mgeo_ready", "1 once the model is loaded and the loop runs")
        up.add_metric([], 1.0 if s.ready else 0.0)
        yield up


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
