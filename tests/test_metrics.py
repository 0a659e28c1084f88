"""Metrics and health endpoints of a worker: the exposition alone, and on the real broker."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import Producer
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import http_get as _get, worker_env
from mgeo import wire
from mgeo.tools.broker import free_port
from mgeo.settings import ModelSettings, WorkerSettings
from engines import RuleEngine
from mgeo.worker.stream.events import Stats
from mgeo.worker.stream.health import HealthServer, loop_liveness
from mgeo.worker.stream.metrics import Metrics, torch_gpu_memory
from mgeo.worker.stream.processor import StreamProcessor
from mgeo.worker.stream.scoring import Scorer


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


@pytest.mark.broker
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
    # The histograms count the engine's model batches: every unique pair went through one.
    assert _metric(text, "mgeo_batch_pairs_sum") == 300
    assert _metric(text, "mgeo_batch_tokens_sum") == _metric(text, "mgeo_padded_tokens_total")
    assert _metric(text, "mgeo_inference_seconds_count") == _metric(text, "mgeo_batches_total")
    # Tokenizing happens inside the inference calls, on the helper thread.
    assert 0 < _metric(text, "mgeo_tokenize_seconds_total") <= _metric(
        text, "mgeo_inference_seconds_sum")
    assert _metric(text, "mgeo_end_to_end_seconds_count") == 301
    assert _metric(text, "mgeo_token_budget") > 0
    assert _metric(text, "mgeo_rebalances_total", '{kind="assigned"}') >= 1
    assert all(name.startswith("mgeo_") for name in
               re.findall(r"^# TYPE (\S+)", text, re.M))
    assert worker.stop() == 0, worker.log()


@pytest.mark.broker
def test_liveness_fails_when_the_loop_stalls(bootstrap, topics):
    s = WorkerSettings(bootstrap_servers=bootstrap, input_topic=topics["input"],
                       output_topic=topics["output"], dlq_topic=topics["dlq"],
                       group_id=topics["group"], session_timeout_ms=6000, liveness_timeout=1.0)
    stats = Stats()
    metrics = Metrics(stats)
    proc = StreamProcessor(s, Scorer(RuleEngine()), observer=metrics, stats=stats)
    server = HealthServer(metrics.registry, 0, live=loop_liveness(stats, s.liveness_timeout),
                          ready=lambda: stats.ready, host="127.0.0.1").start()
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


def _publish_one_batch_each(bootstrap: str, topic: str, n: int, partition: int = 0) -> None:
    """Requests in batches of one record: Tansu reports a partition's end as the base offset
    of its last batch + 1, so only then is its figure the true end (see tools/broker.py)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(n):
        p.produce(topic, key=f"s{i}".encode(), partition=partition,
                  value=wire.encode_request(f"s{i}", "成都市武侯区天府大道100号", f"天府大道{i}号"))
        assert p.flush(30) == 0


@pytest.mark.broker
def test_liveness_fails_while_held_partitions_are_not_read(bootstrap, topics):
    """The stuck worker of issue 18: its partitions paused inside librdkafka behind the loop's
    back (librdkafka kept their pause flag across a lost and regained assignment) while the
    loop ticks and believes it reads. /healthz, the metrics and the lag must say so."""
    s = WorkerSettings(bootstrap_servers=bootstrap, input_topic=topics["input"],
                       output_topic=topics["output"], dlq_topic=topics["dlq"],
                       group_id=topics["group"], session_timeout_ms=6000, liveness_timeout=3.0,
                       stats_interval_ms=500)
    stats = Stats()
    metrics = Metrics(stats)
    proc = StreamProcessor(s, Scorer(RuleEngine()), observer=metrics, stats=stats)
    server = HealthServer(metrics.registry, 0, live=loop_liveness(stats, s.liveness_timeout),
                          ready=lambda: stats.ready, host="127.0.0.1").start()
    freeze, thaw = threading.Event(), threading.Event()
    tick = proc._tick

    def tick_with_a_fault():  # in the loop's thread, as librdkafka would leave it
        if freeze.is_set():
            freeze.clear()
            proc.consumer.pause(proc.consumer.assignment())
        if thaw.is_set():
            thaw.clear()
            proc.consumer.resume(proc.consumer.assignment())
        tick()

    proc._tick = tick_with_a_fault
    t = threading.Thread(target=proc.run, daemon=True)
    t.start()
    try:
        _until(lambda: stats.ready and len(stats.assigned) == 4, 60, "all four partitions")
        freeze.set()
        _until(lambda: not freeze.is_set(), 30, "the fault")
        n = 40
        _publish_one_batch_each(bootstrap, topics["input"], n)
        code, body = _until(lambda: (lambda r: r if r[0] == 503 else None)(
            _get(server.port, "/healthz")), 60, "liveness to fail")
        assert "has read none of them" in body and f"[0]" in body, body
        _, text = _get(server.port, "/metrics")
        assert _metric(text, "mgeo_partitions_stalled") == 1
        assert _metric(text, "mgeo_consumer_lag", '{partition="0"}') == n  # the truth
        assert _metric(text, "mgeo_consumer_lag_total") == n
        assert _get(server.port, "/readyz")[0] == 200  # ready, and yet not live
        thaw.set()
        _until(lambda: _get(server.port, "/healthz")[0] == 200, 30, "liveness to recover")
        _until(lambda: stats.answered == n, 30, "every request answered")
        _, text = _get(server.port, "/metrics")
        assert _metric(text, "mgeo_partitions_stalled") == 0
    finally:
        thaw.set()
        proc.stop()
        t.join(60)
        server.stop()


def test_lag_of_a_partition_with_nothing_committed_is_the_log_from_its_start():
    """librdkafka reports -1 while a partition has no committed offset (a new group, or a
    partition never fetched since its assignment): the stuck worker of issue 18 showed a lag
    far below the truth."""
    stats = Stats()
    stats.assigned = [("in", 0), ("in", 1)]
    metrics = Metrics(stats)
    part = {"fetch_state": "active", "lo_offset": 0, "hi_offset": 1000, "ls_offset": 1000}
    metrics.librdkafka_stats(json.dumps({"topics": {"in": {"partitions": {
        "0": {**part, "committed_offset": -1001, "consumer_lag": -1},
        "1": {**part, "committed_offset": 400, "consumer_lag": 600},
        "2": {**part, "committed_offset": 0, "consumer_lag": 1000},  # not held here
        "-1": {"fetch_state": "none", "consumer_lag": -1}}}}}))
    assert metrics.lag == {"in/0": 1000, "in/1": 600}
    stats.stalled = {("in", 1): 700}  # the broker's figure, taken by the loop's check
    fams = _families(metrics)
    lag = {s.labels["partition"]: s.value for s in fams["mgeo_consumer_lag"].samples}
    assert lag == {"0": 1000, "1": 700}
    assert fams["mgeo_partitions_stalled"].samples[0].value == 1


# ---- the exposition, without a broker -----------------------------------------------------------

# The metrics the issue asks for: name -> (Prometheus type, label names).
REQUIRED = {
    "mgeo_pairs_scored": ("counter", set()),
    "mgeo_error_results": ("counter", set()),
    "mgeo_dead_letters": ("counter", set()),
    "mgeo_batch_pairs": ("histogram", set()),
    "mgeo_batch_tokens": ("histogram", set()),
    "mgeo_inference_seconds": ("histogram", set()),
    "mgeo_end_to_end_seconds": ("histogram", set()),
    "mgeo_consumer_lag": ("gauge", {"partition"}),
    "mgeo_token_budget": ("gauge", set()),
    "mgeo_gpu_memory_bytes": ("gauge", {"kind"}),
    "mgeo_cache_hit_ratio": ("gauge", set()),
    "mgeo_rebalances": ("counter", {"kind"}),
}
# Label names any metric may carry: none of them grows with traffic (no ids, no addresses).
LOW_CARDINALITY = {"kind", "partition", "stage"}


def _stats_json(lags: dict[int, int], topic: str = "address-pairs") -> str:
    parts = {str(p): {"fetch_state": "active", "consumer_lag": lag} for p, lag in lags.items()}
    parts["-1"] = {"fetch_state": "none", "consumer_lag": -1}  # librdkafka's internal partition
    parts["9"] = {"fetch_state": "none", "consumer_lag": 5}    # not ours
    return json.dumps({"topics": {topic: {"partitions": parts}}})


def _families(metrics: Metrics) -> dict:
    text = generate_latest(metrics.registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


@pytest.fixture()
def engine(tiny_model):
    from mgeo.worker.inference.engine import Engine

    # A small budget: one inference call runs several model batches.
    s = ModelSettings(model=tiny_model, device="cpu", token_budget=256, cache_size=64)
    with Engine.from_settings(s) as e:
        yield e


def _pairs(n: int, start: int = 0) -> list[tuple[str, str]]:
    return [("成都市武侯区天府大道100号", f"成都市武侯区天府大道{i}号附{i * 7}栋")
            for i in range(start, start + n)]


def test_every_required_metric_is_exported_with_low_cardinality_labels(engine):
    stats = Stats()
    stats.scored, stats.error_results, stats.dead_letters = 40, 2, 1
    stats.assignments, stats.revocations = 2, 1
    stats.assigned = [("address-pairs", 0), ("address-pairs", 3)]
    metrics = Metrics(stats, engine.stats, lambda: 3, queues=lambda: {"intake": 7},
                      gpu_memory=lambda: {"allocated": 1 << 30, "reserved": 3 << 29})
    engine.add_observer(metrics)
    start = time.perf_counter()
    engine.score(_pairs(40) + _pairs(5))  # 5 repeats: deduplicated, then cached next time
    engine.score(_pairs(5))
    metrics.scored(45, time.perf_counter() - start)
    metrics.published([int(time.time() * 1000) - 1500], time.time())
    metrics.librdkafka_stats(_stats_json({0: 12, 3: 0}))

    fams = _families(metrics)
    for name, (kind, labels) in REQUIRED.items():
        assert name in fams, f"{name} is not exported"
        assert fams[name].type == kind, (name, fams[name].type)
        for sample in fams[name].samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample.labels)
    for name, fam in fams.items():
        assert name.startswith("mgeo_"), name
        for sample in fam.samples:
            assert set(sample.labels) - {"le"} <= LOW_CARDINALITY, (name, sample.labels)

    def value(name, **labels):
        (got,) = [s.value for s in fams[name].samples
                  if s.name in (name, name + "_total") and s.labels == labels]
        return got

    assert value("mgeo_pairs_scored") == 40
    assert value("mgeo_error_results") == 2 and value("mgeo_dead_letters") == 1
    assert value("mgeo_rebalances", kind="assigned") == 2
    assert value("mgeo_rebalances", kind="lost") == 0
    assert value("mgeo_consumer_lag", partition="0") == 12
    assert value("mgeo_consumer_lag", partition="3") == 0
    assert {s.labels["partition"] for s in fams["mgeo_consumer_lag"].samples} == {"0", "3"}
    assert value("mgeo_consumer_lag_total") == 12
    assert value("mgeo_token_budget") == engine.token_budget
    assert value("mgeo_gpu_memory_bytes", kind="allocated") == 1 << 30
    assert value("mgeo_cache_hit_ratio") == pytest.approx(5 / 45)
    assert value("mgeo_cache_hits") == 5 and value("mgeo_cache_lookups") == 45
    assert value("mgeo_inflight_requests") == 3
    assert value("mgeo_stage_queue", stage="intake") == 7
    assert abs(value("mgeo_loop_last_tick_timestamp_seconds") - time.time()) < 60
    e2e = {s.name: s.value for s in fams["mgeo_end_to_end_seconds"].samples}
    assert e2e["mgeo_end_to_end_seconds_count"] == 1
    assert 1.4 < e2e["mgeo_end_to_end_seconds_sum"] < 60


def test_batch_histograms_count_each_model_batch_once(engine):
    metrics = Metrics(Stats(), engine.stats, gpu_memory=lambda: None)
    engine.add_observer(metrics)

    def histogram(name):
        fam = _families(metrics)[name]
        return {s.name[len(name) + 1:]: s.value for s in fam.samples if "le" not in s.labels}

    engine.score(_pairs(60))
    metrics.scored(60, 0.5)
    first = engine.stats()
    assert first["batches"] > 1, "the small budget should split the call"
    assert histogram("mgeo_batch_pairs") == {"count": first["batches"],
                                             "sum": first["scored_pairs"]}
    assert histogram("mgeo_batch_tokens")["sum"] == first["padded_tokens"]
    buckets = {s.labels["le"]: s.value for s in _families(metrics)["mgeo_batch_tokens"].samples
               if "le" in s.labels}
    assert buckets["256.0"] == buckets["+Inf"], "a batch went past the 256-token budget"
    assert histogram("mgeo_inference_seconds")["count"] == 1

    engine.score(_pairs(30, start=1000))
    metrics.scored(30, 0.2)
    second = engine.stats()
    assert histogram("mgeo_batch_pairs") == {"count": second["batches"],
                                             "sum": second["scored_pairs"]}
    assert histogram("mgeo_batch_tokens")["sum"] == second["padded_tokens"]
    # A CPU worker holds no GPU memory, and says so rather than leaving the series empty.
    gpu = {s.labels["kind"]: s.value for s in _families(metrics)["mgeo_gpu_memory_bytes"].samples}
    assert gpu == {"allocated": 0.0, "reserved": 0.0}


def test_end_to_end_buckets_resolve_milliseconds():
    metrics = Metrics(Stats(), gpu_memory=lambda: None)
    now = time.time()
    metrics.published([int(now * 1000) - 3, int(now * 1000) - 40, 0], now)  # 0: no timestamp
    fam = _families(metrics)["mgeo_end_to_end_seconds"]
    le = {s.labels["le"]: s.value for s in fam.samples if "le" in s.labels}
    assert le["0.001"] == 0 and le["0.005"] == 1 and le["0.05"] == 2 and le["+Inf"] == 2


def test_gpu_memory_is_read_from_torch_only_once_cuda_is_up(monkeypatch):
    def fake_torch(initialised: bool):
        cuda = SimpleNamespace(is_initialized=lambda: initialised,
                               memory_allocated=lambda: 123, memory_reserved=lambda: 456)
        return SimpleNamespace(cuda=cuda)

    monkeypatch.setitem(sys.modules, "torch", fake_torch(True))
    assert torch_gpu_memory() == {"allocated": 123, "reserved": 456}
    monkeypatch.setitem(sys.modules, "torch", fake_torch(False))
    assert torch_gpu_memory() is None
    monkeypatch.setitem(sys.modules, "torch", None)  # a host without torch: never imported
    assert torch_gpu_memory() is None


def test_gpu_memory_on_a_real_gpu(tiny_model):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from mgeo.worker.inference.engine import Engine

    with Engine.from_settings(ModelSettings(model=tiny_model, device="cuda",
                                            token_budget=4096)) as engine:
        engine.score(_pairs(16))
        metrics = Metrics(Stats(), engine.stats)
        samples = {s.labels["kind"]: s.value
                   for s in _families(metrics)["mgeo_gpu_memory_bytes"].samples}
        assert samples["allocated"] > 0
        assert samples["reserved"] >= samples["allocated"]
