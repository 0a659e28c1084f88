"""The Kafka loop alone (no torch): a real broker, a small deterministic engine in the test."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Producer

from mgeo import wire
from mgeo.settings import WorkerSettings
from conftest import committed_offsets, read_messages
from kafka_log import read_committed_log
from mgeo.producer.collect import Collector
from mgeo.worker.stream.processor import StreamProcessor
from mgeo.worker.stream.scoring import Scorer
from engines import RuleEngine

pytestmark = pytest.mark.broker


def _settings(bootstrap, topics, **kw) -> WorkerSettings:
    return WorkerSettings(bootstrap_servers=bootstrap, input_topic=topics["input"],
                          output_topic=topics["output"], dlq_topic=topics["dlq"],
                          group_id=topics["group"], session_timeout_ms=6000,
                          commit_interval=0.2, **kw)


def _publish(bootstrap, topic, reqs):
    p = Producer({"bootstrap.servers": bootstrap})
    for rid, a, b in reqs:
        p.produce(topic, key=rid.encode(), value=wire.encode_request(rid, a, b))
    assert p.flush(30) == 0


def _start(proc: StreamProcessor) -> tuple[threading.Thread, list]:
    rc: list = []
    t = threading.Thread(target=lambda: rc.append(proc.run()), daemon=True)
    t.start()
    return t, rc


def _committed_total(bootstrap, group, topic) -> int:
    return sum(committed_offsets(bootstrap, group, topic).values())


def test_poison_pair_gets_an_error_and_the_rest_are_scored(bootstrap, topics):
    reqs = [(f"r{i}", f"地址{i}", f"地址{i}" if i % 2 else "别处") for i in range(40)]
    reqs[17] = ("bad", "有毒的地址", "地址")
    _publish(bootstrap, topics["input"], reqs)
    proc = StreamProcessor(_settings(bootstrap, topics, max_messages=40), Scorer(RuleEngine()))
    t, rc = _start(proc)
    out = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    out.collect(40, timeout=60)
    out.close()
    t.join(60)
    assert rc == [0]
    assert out.results["bad"]["error"]["code"] == wire.SCORING_FAILED
    scored = [r for r in out.results.values() if "error" not in r]
    assert len(scored) == 39
    assert all(r["label"] == ("exact_match" if int(r["id"][1:]) % 2 else "not_match")
               for r in scored)
    assert _committed_total(bootstrap, topics["group"], topics["input"]) == 40


def test_broken_engine_stops_the_worker_without_committing(bootstrap, topics):
    _publish(bootstrap, topics["input"], [(f"r{i}", "甲", "乙") for i in range(10)])
    proc = StreamProcessor(_settings(bootstrap, topics), Scorer(RuleEngine(broken=True)))
    t, rc = _start(proc)
    t.join(90)
    assert rc == [1]
    assert _committed_total(bootstrap, topics["group"], topics["input"]) == 0


def test_pauses_when_full_and_answers_everything_after(bootstrap, topics):
    engine = RuleEngine()
    engine.gate.clear()  # inference blocks until the test opens the gate
    _publish(bootstrap, topics["input"], [(f"r{i}", "甲", "甲") for i in range(300)])
    proc = StreamProcessor(_settings(bootstrap, topics, max_inflight=50, consume_batch=20,
                                     max_messages=300), Scorer(engine))
    t, rc = _start(proc)
    deadline = threading.Event()
    for _ in range(300):  # bounded: up to 30 s for the loop to fill up and pause
        if proc._paused:
            break
        deadline.wait(0.1)
    assert proc._paused and proc.tracker.inflight >= 50
    assert proc.stats.consumed < 300  # it stopped reading instead of buffering everything
    engine.gate.set()
    t.join(120)
    assert rc == [0] and proc.stats.answered == 300
    # It stayed in the group the whole time: one assignment, no loss, one revoke at shutdown.
    assert (proc.stats.assignments, proc.stats.losses, proc.stats.revocations) == (1, 0, 1)


def test_a_topic_of_garbage_stops_the_worker_instead_of_draining_it(bootstrap, topics):
    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(100):
        p.produce(topics["input"], value=b"<xml>not ours</xml>")
    assert p.flush(30) == 0
    proc = StreamProcessor(_settings(bootstrap, topics, dead_letter_window=20,
                                     max_dead_letter_ratio=0.5), Scorer(RuleEngine()))
    t, rc = _start(proc)
    t.join(90)
    assert rc == [1]
    # Stopped at the verdict instead of draining the topic into the dead-letter queue.
    assert proc.stats.dead_letters < 100
    assert _committed_total(bootstrap, topics["group"], topics["input"]) < 100



@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_an_unwritable_results_topic_advances_no_offsets(bootstrap, topics, delivery):
    reqs = [(f"r{i}", f"地址{i}", "别处") for i in range(30)]
    _publish(bootstrap, topics["input"], reqs)
    # The broker refuses this topic name: every answer fails.
    broken = _settings(bootstrap, {**topics, "output": "no/such topic"}, delivery=delivery,
                       transactional_id=topics["group"])
    proc = StreamProcessor(broken, Scorer(RuleEngine()))
    t, rc = _start(proc)

    def failed_twice_over():  # retried every answer, or aborted and re-read them all, twice
        return (proc.stats.delivery_retries >= 2 * len(reqs) if delivery == "at-least-once"
                else proc.stats.aborts >= 2 and proc.stats.consumed >= 2 * len(reqs))

    deadline = time.monotonic() + 60
    while not failed_twice_over() and time.monotonic() < deadline:
        t.join(0.1)  # the worker keeps trying
    assert failed_twice_over()
    assert proc.stats.answered == 0 and proc.stats.commits == 0
    proc.hurry()
    t.join(60)
    assert rc == [0]
    assert _committed_total(bootstrap, topics["group"], topics["input"]) == 0
    # Nothing was lost: a worker with a writable results topic answers every request.
    fixed = StreamProcessor(_settings(bootstrap, topics, max_messages=len(reqs)),
                            Scorer(RuleEngine()))
    t, rc = _start(fixed)
    t.join(60)
    assert rc == [0]
    results = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    results.collect(len(reqs), timeout=30)
    assert set(results.results) == {rid for rid, _, _ in reqs}


def _abort_first_transaction(proc: StreamProcessor) -> dict:
    """Make the processor's first non-empty transaction abort for real (broker abort, rewind,
    read again), after its answers reached the broker."""
    eos = proc.delivery
    seen = {"aborted_with": 0}
    commit = eos.commit

    def commit_or_abort(consumer, tps=None):
        with eos.lock:
            if eos._in_txn and not seen["aborted_with"]:
                proc.producer.flush(10)
                seen["aborted_with"] = sum(t.counts[0] + t.counts[1] for t in eos._open.values())
                eos._abort(consumer, "injected by the test")
                return
        commit(consumer, tps)

    eos.commit = commit_or_abort
    return seen


def test_exactly_once_abort_rewinds_and_answers_each_id_once(bootstrap, topics,
                                                            broker_hides_aborted):
    n = 300
    reqs = [(f"r{i}", f"地址{i}", f"地址{i}" if i % 2 else "别处") for i in range(n)]
    # Early answers (error results, dead letters) wait for the pairs before them in the
    # transaction, so an abort cannot leave them committed without their offsets.
    reqs[5] = ("empty", "", "地址")
    _publish(bootstrap, topics["input"], reqs)
    junk = Producer({"bootstrap.servers": bootstrap})
    junk.produce(topics["input"], value=b"not json")
    assert junk.flush(30) == 0
    s = _settings(bootstrap, topics, delivery="exactly-once", transactional_id=topics["group"])
    engine = RuleEngine()
    engine.gate.clear()  # hold inference until the abort is armed
    proc = StreamProcessor(s, Scorer(engine))
    t, rc = _start(proc)
    for _ in range(600):  # bounded: the delivery strategy exists once the clients are up
        if proc.delivery is not None:
            break
        t.join(0.05)
    seen = _abort_first_transaction(proc)
    engine.gate.set()
    results = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    results.collect(n, timeout=60)
    assert set(results.results) == {rid for rid, _, _ in reqs}
    assert seen["aborted_with"] > 0 and proc.stats.aborts == 1
    # The aborted answers reached the broker: a read_uncommitted reader sees them and the
    # answers again. A read_committed reader sees each id once, where the broker filters
    # aborted transactions (Kafka does; Tansu 0.6 does not, see conftest.broker_hides_aborted).
    dirty = read_messages(bootstrap, {topics["output"]: 4}, n + seen["aborted_with"],
                          "read_uncommitted")
    assert len(dirty) == n + seen["aborted_with"]
    clean = read_messages(bootstrap, {topics["output"]: 4}, n)
    assert len(clean) == (n if broker_hides_aborted else n + seen["aborted_with"])
    # What a read_committed reader gets by the log's transaction markers, on any broker: each
    # id exactly once.
    log_ids = [r.key for r in read_committed_log(bootstrap, topics["output"], 4)]
    assert sorted(log_ids) == sorted(rid.encode() for rid, _, _ in reqs)
    dead = [r.value for r in read_committed_log(bootstrap, topics["dlq"], 1)]
    assert dead == [b"not json"]
    assert _committed_total(bootstrap, topics["group"], topics["input"]) == n + 1
    proc.stop()
    t.join(60)
    assert rc == [0]
