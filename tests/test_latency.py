"""The worker's own end-to-end histogram agrees with what a client measures from the records'
timestamps (same percentiles within the bucket resolution), and the latency bench's helpers
compute what they say. Speed itself is measured by `mgeo bench --latency`, not asserted."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import worker_env
from mgeo.tools.harness import Answers, paced, steady_rate
from mgeo.tools.latency import histogram_quantile, percentile, scrape_e2e
from mgeo.worker.stream.metrics import SECONDS_BUCKETS


def test_histogram_quantile_interpolates_as_prometheus_does():
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.1 * 10 / 10)
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.1 + 0.1 * (20 - 10) / 20)
    assert histogram_quantile(buckets, 1.0) == pytest.approx(0.4)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def test_the_steady_rate_counts_only_answers_after_its_start():
    # An answer every 10 ms: 100 a second, whatever the warm-up share left out.
    assert steady_rate(range(0, 10_000, 10)) == pytest.approx(100, rel=0.01)
    # 1,000 pairs in four batches of 250, one a second: answers after the first batch's
    # moment (750) over the 3 s since. Counting the rest of the first batch made it 25,000/s.
    batches = [t for t in (0, 1000, 2000, 3000) for _ in range(250)]
    assert steady_rate(batches) == pytest.approx(250)


def test_a_drain_in_too_few_bursts_is_timed_from_when_the_worker_could_start():
    # 1,000 pairs written at t=0, answered 4 s later in sub-batches 10 ms apart (one batch):
    # the whole drain's rate, not the 50 ms "steady" part's.
    burst = [4000 + 10 * (i // 200) for i in range(1000)]
    assert steady_rate(burst, since_ms=0) == pytest.approx(1000 / 4.04)
    assert steady_rate(burst) > 10_000  # what it measured without the drain's start
    # A long steady drain keeps its steady rate when its start is known.
    assert steady_rate(range(1000, 11_000, 10), since_ms=0) == pytest.approx(100, rel=0.01)
    assert steady_rate([5000] * 10) != steady_rate([5000] * 10)  # NaN: nothing to time
    assert steady_rate([]) != steady_rate([])


def test_the_latency_loads_are_shares_of_capacity_from_a_flag_or_the_environment(monkeypatch):
    from mgeo.tools.bench_settings import BenchSettings

    assert BenchSettings().latency_shares is None  # the bench's 0.1, 1/3 and 2/3
    assert BenchSettings(latency_shares="0.1, 0.5").latency_shares == [0.1, 0.5]
    monkeypatch.setenv("MGEO_LATENCY_SHARES", "0.25")  # one number is a list of one
    monkeypatch.setenv("MGEO_PROCESSES_LIST", "2")
    got = BenchSettings()
    assert (got.latency_shares, got.processes_list) == ([0.25], [2])
    for bad in ("0", "0.5,1.5", "a third"):
        with pytest.raises(ValueError):
            BenchSettings(latency_shares=bad)


def _bucket(value: float) -> int:
    return next((i for i, b in enumerate(SECONDS_BUCKETS) if value <= b), len(SECONDS_BUCKETS))


@pytest.mark.broker
@pytest.mark.slow
def test_the_worker_histogram_agrees_with_the_client(bootstrap, topics, tiny_model,
                                                     start_worker):
    from mgeo.tools.broker import free_port

    port = free_port()
    worker = start_worker(worker_env(bootstrap, topics, tiny_model, MGEO_METRICS_PORT=str(port)))
    worker.wait_for(r"assigned [1-9]\d* partitions", 90)
    answers = Answers(bootstrap, topics["output"], 4)
    pairs = [("上海市浦东新区世纪大道100号", f"世纪大道{i}号") for i in range(120)]
    sent = paced(bootstrap, topics["input"], pairs, rate=40, prefix="q")
    stamps = answers.read(len(pairs), timeout=60)
    answers.close()
    assert len(stamps) == len(pairs)
    client = [(stamps[rid.encode()] - ts) / 1000 for rid, ts in sent.items()]
    buckets = scrape_e2e(port)
    assert buckets[-1][1] == len(pairs)  # one observation per answer
    for q in (0.5, 0.9):
        mine, theirs = percentile(client, q), histogram_quantile(buckets, q)
        # Record timestamps are whole milliseconds: allow one bucket either way.
        assert abs(_bucket(mine) - _bucket(theirs)) <= 1, (q, mine, theirs)
    assert worker.stop() == 0


def _bench_script(name: str):
    """A script of bench/ as a module (they are run as files, not imported by the package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_latency_client_reports_each_slice_of_the_load_apart():
    """bench/latency_client.py's slices (bench/RESULTS.md quotes them): the requests sent in
    each, by their due time, and the cores each process used between its two marks."""
    client = _bench_script("latency_client")
    rate = 2.0  # ten requests over 5 s: r0-r4 in the first slice, r5-r9 in the second
    sent = {f"r{i}": 1000.0 * i / rate for i in range(10)}
    stamps = {f"r{i}": sent[f"r{i}"] + (100 if i < 5 else 900) for i in range(10)}
    del stamps["r9"]  # unanswered: left out of its slice's count and percentiles
    marks = [(0.0, {"broker": 1.0, "worker": None}), (2.5, {"broker": 2.0, "worker": None}),
             (5.0, {"broker": 4.5, "worker": None})]
    first, second = client.windows(sent, stamps, rate, marks)
    assert (first["answered"], first["p50"], first["p99"]) == (5, 100.0, 100.0)
    assert (second["answered"], second["p50"], second["p99"]) == (4, 900.0, 900.0)
    assert first["cores"] == {"broker": 0.4, "worker": None}  # 1 CPU-s in 2.5 s
    assert second["cores"]["broker"] == 1.0


@pytest.mark.slow
def test_the_broker_cost_script_runs():
    """bench/broker_cost.py, whose figures bench/RESULTS.md quotes, briefly: a setup with no
    reader and one with a reader that reads everything sent."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "cost.json"
        out = subprocess.run(
            [sys.executable, str(root / "bench" / "broker_cost.py"), "--rate", "100",
             "--seconds", "3", "--window", "1", "--fetch-waits", "50", "--json", str(out_json)],
            capture_output=True, text=True, timeout=120, cwd=root)
        assert out.returncode == 0, out.stderr[-2000:]
        setups = json.loads(out_json.read_text())["setups"]
    assert list(setups) == ["no reader", "reader, fetch.wait.max.ms 50"]
    control, read = setups.values()
    assert len(control) >= 2 and all(r["read"] is None for r in control)
    assert read[-1]["sent"] == 300 and read[-1]["read"] >= read[0]["read"] > 0
    assert all(r["broker_cores"] >= 0 for r in control + read)
    assert "broker" in out.stdout and "fetches/s" in out.stdout
