"""Nothing lost under crashes, rebalances, slow batches, broker stalls and random input.

Each test runs real `mgeo worker` processes (a tiny model) against a real broker. Waits are on
progress (results collected, log lines), bounded; the only fixed durations are the faults'.
"""

from __future__ import annotations

import random
import threading
import time

import orjson
import pytest
from confluent_kafka import Producer
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ASSIGNED, committed_offsets, read_messages, worker_env
from kafka_log import read_committed_log
from mgeo import wire
from mgeo.kafka import create_topics
from mgeo.tools.broker import EmbeddedBroker
from mgeo.settings import WorkerSettings
from mgeo.producer.collect import Collector
from engines import RuleEngine
from mgeo.worker.stream.processor import StreamProcessor
from mgeo.worker.stream.scoring import Scorer

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def _publish(bootstrap: str, topic: str, ids: range, prefix: str = "p",
             per_second: float | None = None) -> None:
    """Publish requests for `ids`; at `per_second` (a live stream) or all at once."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    start = time.monotonic()
    for i in range(ids.start, ids.stop):
        p.produce(topic, key=f"{prefix}{i}".encode(),
                  value=wire.encode_request(f"{prefix}{i}", f"湖北省武汉市洪山区珞喻路{i}号",
                                            f"武汉市珞喻路{i % 50}号"))
        if per_second and i % 100 == 0:
            time.sleep(max(0.0, start + (i - ids.start) / per_second - time.monotonic()))
            p.poll(0)
        elif i % 5000 == 0:
            p.poll(0)
    assert p.flush(60) == 0


def _collect_until(collector: Collector, n: int, timeout: float, what: str) -> None:
    collector.collect(n, timeout=timeout, deadline=time.monotonic() + timeout)
    assert len(collector.results) >= n, f"{what}: {len(collector.results)} of {n} results"


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_sigkill_three_times_loses_nothing(bootstrap, topics, tiny_model, start_worker, delivery,
                                           broker_hides_aborted):
    n = 20_000
    rng = random.Random(7)
    # At most `inflight` requests are read and unanswered at any time (the limit, plus what one
    # poll may bring past it), and answers wait at most one commit interval to be committed:
    # all a killed worker can leave for redelivery.
    limit, poll, commit_every, rate = 500, 200, 0.5, 500
    env = worker_env(bootstrap, topics, tiny_model, MGEO_COMMIT_INTERVAL=str(commit_every),
                     MGEO_DELIVERY=delivery, MGEO_MAX_INFLIGHT=str(limit),
                     MGEO_CONSUME_BATCH=str(poll))
    # Exactly-once: each worker keeps its transactional id across restarts, as a pod does, so
    # a restart aborts what the killed run left open.
    victim_env = {**env, "MGEO_TRANSACTIONAL_ID": f"{topics['group']}-victim"}
    # A live stream (about 40 s of traffic), so every kill lands on a worker with work in hand.
    feed = threading.Thread(target=_publish, args=(bootstrap, topics["input"], range(n)),
                            kwargs={"per_second": rate}, daemon=True)
    feed.start()
    steady = start_worker({**env, "MGEO_TRANSACTIONAL_ID": f"{topics['group']}-steady"})
    victim = start_worker(victim_env)
    out = Collector({"bootstrap.servers": bootstrap}, topics["output"])  # read_committed
    for k in range(3):  # kill at random points of progress, restart each time
        mark = int(n * (0.15 + 0.25 * k + rng.uniform(0, 0.1)))
        victim.wait_for(ASSIGNED, 90)
        before = len(out.results)
        _collect_until(out, mark, 180, f"before kill {k + 1}")
        # The victim is really working: answers keep coming while it holds partitions.
        _collect_until(out, len(out.results) + 200, 60, f"victim {k + 1} at work")
        assert len(out.results) > before
        victim.kill()
        victim = start_worker(victim_env)
    feed.join(120)
    _collect_until(out, n, 300, "after the kills")
    out.collect(timeout=3)  # let late duplicates in, if any
    assert set(out.results) == {f"p{i}" for i in range(n)}
    dup = out.messages - n
    print(f"\n{delivery} crash test: {n} ids, {dup} duplicates in a librdkafka read_committed "
          f"read after 3 SIGKILLs")
    assert steady.stop() == 0 and victim.stop() == 0
    if delivery == "at-least-once":
        # Duplicates only from work the killed worker held: read and unanswered, or answered
        # within the commit interval before the kill. Three kills.
        bound = 3 * (limit + poll + int(rate * commit_every * 2))
        assert bound < n / 4  # a bound that can fail
        assert dup <= bound, f"{dup} duplicates, more than the {bound} three kills can explain"
        return
    # Exactly-once: the transaction markers in the log say what a read_committed reader gets,
    # on any broker; each id is there exactly once.
    committed = read_committed_log(bootstrap, topics["output"], 4, timeout=60)
    ids = [orjson.loads(r.value)["id"] for r in committed]
    assert len(ids) == n and set(ids) == {f"p{i}" for i in range(n)}
    # A broker that filters aborted transactions (Kafka) gives librdkafka readers the same;
    # Tansu 0.6 also hands them the killed worker's aborted answers.
    if broker_hides_aborted:
        assert dup == 0


def test_workers_join_and_leave_every_id_answered(bootstrap, topics, tiny_model, start_worker):
    n = 6000
    env = worker_env(bootstrap, topics, tiny_model, MGEO_COMMIT_INTERVAL="0.5")
    _publish(bootstrap, topics["input"], range(n))
    first = start_worker(env)
    out = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    _collect_until(out, n // 5, 120, "one worker")
    extra = [start_worker(env), start_worker(env)]
    for w in extra:
        w.wait_for(ASSIGNED, 90)
    first.wait_for("revoked", 60)  # the group really rebalanced to three members
    _collect_until(out, n // 2, 120, "three workers")
    for w in extra:
        assert w.stop() == 0, w.log()
    _collect_until(out, n, 180, "back to one worker")
    assert set(out.results) == {f"p{i}" for i in range(n)}
    assert first.proc.poll() is None
    assert first.stop() == 0
    # Nothing committed past unwritten results: every offset up to the commit has an answer,
    # and the commit reaches the end.
    committed = committed_offsets(bootstrap, topics["group"], topics["input"])
    assert sum(committed.values()) == n


def test_a_batch_slower_than_max_poll_interval_keeps_the_group(bootstrap, topics):
    class SlowEngine(RuleEngine):
        def forward(self, pairs):
            time.sleep(9)  # stands for a slow GPU batch; longer than max.poll.interval.ms
            return super().forward(pairs)

    _publish(bootstrap, topics["input"], range(40))
    s = WorkerSettings(bootstrap_servers=bootstrap, input_topic=topics["input"],
                       output_topic=topics["output"], dlq_topic=topics["dlq"],
                       group_id=topics["group"], session_timeout_ms=6000,
                       max_poll_interval_ms=7000, max_messages=40)
    proc = StreamProcessor(s, Scorer(SlowEngine()))
    rc: list = []
    t = threading.Thread(target=lambda: rc.append(proc.run()), daemon=True)
    t.start()
    t.join(120)
    assert rc == [0]
    assert (proc.stats.assignments, proc.stats.losses) == (1, 0)  # never evicted
    msgs = read_messages(bootstrap, {topics["output"]: 4}, 40)
    assert len(msgs) == 40  # nothing reprocessed


def test_a_frozen_broker_delays_but_loses_nothing(tiny_model, start_worker, tmp_path):
    n = 3000
    with EmbeddedBroker() as broker:
        names = {"input": "in", "output": "out", "dlq": "dlq", "group": "g"}
        create_topics({"bootstrap.servers": broker.bootstrap}, {"in": 4, "out": 4, "dlq": 1})
        _publish(broker.bootstrap, "in", range(n))
        worker = start_worker(worker_env(broker.bootstrap, names, tiny_model,
                                         MGEO_COMMIT_INTERVAL="0.5"))
        out = Collector({"bootstrap.servers": broker.bootstrap}, "out")
        _collect_until(out, n // 4, 120, "before the stall")
        broker.pause()
        time.sleep(20)  # the fault: the broker is frozen for 20 s
        broker.resume()
        _collect_until(out, n, 240, "after the stall")
        assert set(out.results) == {f"p{i}" for i in range(n)}
        assert worker.proc.poll() is None, worker.log()  # it waited, it did not exit
        assert worker.stop() == 0, worker.log()


def test_random_bytes_and_bad_input_are_all_accounted_for(bootstrap, topics, tiny_model,
                                                          start_worker):
    worker = start_worker(worker_env(bootstrap, topics, tiny_model))
    worker.wait_for("assigned", 90)
    producer = Producer({"bootstrap.servers": bootstrap})
    results = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    round_no = [0]

    @settings(max_examples=5, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(st.binary(max_size=200), min_size=20, max_size=20))
    def one_round(garbage):
        round_no[0] += 1
        r = round_no[0]
        valid = {f"r{r}-v{i}" for i in range(20)}
        for i, value in enumerate(garbage):
            producer.produce(topics["input"], key=f"r{r}-g{i}".encode(), value=value)
            rid = f"r{r}-v{i}"
            producer.produce(topics["input"], key=rid.encode(),
                             value=wire.encode_request(rid, "西安市雁塔区", f"雁塔路{i}号"))
        assert producer.flush(30) == 0
        results.collect(len(results.results) + 20, timeout=60)
        assert valid <= set(results.results)  # every valid pair scored
        assert all("score" in results.results[v] for v in valid)

    one_round()
    assert worker.proc.poll() is None, worker.log()
    assert worker.stop() == 0, worker.log()
    # Every message is accounted for: one answer on the results topic or the dead-letter topic.
    total = 5 * 40
    answers = read_messages(bootstrap, {topics["output"]: 4, topics["dlq"]: 1}, total)
    keys = [m.key() for m in answers]
    assert len(keys) == total and len(set(keys)) == total
