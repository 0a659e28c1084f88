"""Metrics and health endpoints of a worker on the real broker."""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Producer

from conftest import worker_env
from mgeo import wire
from mgeo.broker import free_port
from mgeo.settings import WorkerSettings
from test_loop import RuleEngine
from worker.loop import StreamProcessor
from worker.metrics import HealthServer, Metrics
from worker.scoring import Scorer

pytestmark = pytest.mark.broker


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def _metric(text: str, name: str, labels: str = "") -> float | None:
    m = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def _until(pred, timeout: float, what: str):
    """Poll `pred` (an HTTP scrape: there is no event to wait on) until truthy, bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _publish(bootstrap: str, topic: str, start: int, n: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(start, start + n):
        p.produce(topic, key=str(i).encode(),
                  value=wire.encode_request(str(i), "成都市武侯区天府大道100号", f"天府大道{i}号"))
    p.produce(topic, key=b"bad", value=b"not json")
    assert p.flush(30) == 0


def test_worker_metrics_move_and_lag_drains(bootstrap, topics, tiny_model, start_worker):
    port = free_port()
    worker = start_worker(worker_env(bootstrap, topics, tiny_model, MGEO_METRICS_PORT=str(port),
                                     MGEO_STATS_INTERVAL_MS="500"))
    _until(lambda: _get(port, "/readyz")[0] == 200, 90, "readiness")
    assert _get(port, "/healthz")[0] == 200
    _, before = _get(port, "/metrics")
    assert _metric(before, "mgeo_pairs_scored_total") == 0

    _publish(bootstrap, topics["input"], 0, 300)

    def drained():
        _, text = _get(port, "/metrics")
        answered = _metric(text, "mgeo_answers_delivered_total")
        lag = _metric(text, "mgeo_consumer_lag_total")
        return text if answered == 301 and lag == 0 and "mgeo_consumer_lag{" in text else None

    text = _until(drained, 90, "301 answers delivered and zero lag")
    assert _metric(text, "mgeo_pairs_scored_total") == 300
    assert _metric(text, "mgeo_dead_letters_total") == 1
    assert _metric(text, "mgeo_batch_pairs_count") >= 1
    assert _metric(text, "mgeo_end_to_end_seconds_count") == 301
    assert _metric(text, "mgeo_token_budget") > 0
    assert _metric(text, "mgeo_rebalances_total", '{kind="assigned"}') >= 1
    assert all(name.startswith("mgeo_") for name in
               re.findall(r"^# TYPE (\S+)", text, re.M))
    assert worker.stop() == 0, worker.log()


def test_liveness_fails_when_the_loop_stalls(bootstrap, topics):
    s = WorkerSettings(bootstrap_servers=bootstrap, input_topic=topics["input"],
                       output_topic=topics["output"], dlq_topic=topics["dlq"],
                       group_id=topics["group"], session_timeout_ms=6000, liveness_timeout=1.0)
    proc = StreamProcessor(s, Scorer(RuleEngine()))
    metrics = Metrics(proc.stats, inflight=lambda: proc.tracker.inflight)
    proc.observer = metrics
    server = HealthServer(metrics, 0, s.liveness_timeout, host="127.0.0.1").start()
    stall = threading.Event()
    release = threading.Event()
    tick = proc._tick

    def stalling_tick():  # the stall is on purpose: the loop blocks as a wedged client would
        if stall.is_set():
            release.wait(60)
        tick()

    proc._tick = stalling_tick
    t = threading.Thread(target=proc.run, daemon=True)
    t.start()
    try:
        _until(lambda: _get(server.port, "/readyz")[0] == 200, 60, "readiness")
        assert _get(server.port, "/healthz")[0] == 200
        stall.set()
        code, body = _until(lambda: (lambda r: r if r[0] == 503 else None)(
            _get(server.port, "/healthz")), 30, "liveness to fail")
        assert "has not ticked" in body
        stall.clear()
        release.set()
        _until(lambda: _get(server.port, "/healthz")[0] == 200, 30, "liveness to recover")
    finally:
        release.set()
        proc.stop()
        t.join(60)
        server.stop()
