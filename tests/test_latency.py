"""The worker's own end-to-end histogram agrees with what a client measures from the records'
timestamps (same percentiles within the bucket resolution), and the latency bench's helpers
compute what they say. Speed itself is measured by `mgeo bench --latency`, not asserted."""

from __future__ import annotations

import pytest

from conftest import worker_env
from mgeo.tools.harness import Answers, paced
from mgeo.tools.latency import histogram_quantile, percentile, scrape_e2e
from mgeo.worker.stream.metrics import SECONDS_BUCKETS


def test_histogram_quantile_interpolates_as_prometheus_does():
    buckets = [(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (float("inf"), 40.0)]
    assert histogram_quantile(buckets, 0.25) == pytest.approx(0.1 * 10 / 10)
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.1 + 0.1 * (20 - 10) / 20)
    assert histogram_quantile(buckets, 1.0) == pytest.approx(0.4)
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


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
