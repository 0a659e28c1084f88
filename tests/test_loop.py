"""The Kafka loop alone (no torch): a real broker, a small deterministic engine in the test."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pytest
from confluent_kafka import Producer

from mgeo import wire
from mgeo.settings import WorkerSettings
from conftest import committed_offsets, read_messages
from kafka_log import read_committed_log
from producer.collect import Collector
from worker.loop import StreamProcessor
from worker.scoring import Scorer

pytestmark = pytest.mark.broker


@dataclass
class _Scored:
    probs: dict
    truncated: bool = False


class RuleEngine:
    """Scores by a rule; fails on pairs holding `poison`; can be made to fail on everything."""

    labels = ["not_match", "partial_match", "exact_match"]
    positive = ["exact_match"]
    model_name = "rule"

    def __init__(self, poison: str = "毒", broken: bool = False):
        self.poison, self.broken, self.calls = poison, broken, 0
        self.gate = threading.Event()
        self.gate.set()

    def score(self, pairs):
        self.calls += 1
        self.gate.wait(60)
        if self.broken or any(self.poison in a or self.poison in b for a, b in pairs):
            raise RuntimeError("cannot score")
        return [_Scored({"not_match": 0.0, "partial_match": 0.0, "exact_match": 1.0}
                        if a == b else {"not_match": 1.0, "partial_match": 0.0,
                                        "exact_match": 0.0}) for a, b in pairs]


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
    assert 10 < proc.stats.dead_letters < 100  # stopped early, did not drain the topic



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


class _AbortOnce(StreamProcessor):
    """Aborts its first non-empty transaction for real (broker abort, rewind, read again)."""

    aborted_with = 0  # answers in the aborted transaction

    def _commit_transaction(self):
        if self._in_txn and not self.aborted_with and self.tracker.to_commit():
            self.producer.flush(10)  # its answers really reach the broker before the abort
            self.aborted_with = self.stats.answered
            assert self.aborted_with > 0
            self._abort_transaction("injected by the test")
            return
        super()._commit_transaction()


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
    engine.gate.clear()  # hold inference until the test's first commit can see answers
    proc = _AbortOnce(s, Scorer(engine))
    t, rc = _start(proc)
    engine.gate.set()
    results = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    results.collect(n, timeout=60)
    assert set(results.results) == {rid for rid, _, _ in reqs}
    assert proc.aborted_with > 0 and proc.stats.aborts == 1
    # The aborted answers reached the broker: a read_uncommitted reader sees them and the
    # answers again. A read_committed reader sees each id once, where the broker filters
    # aborted transactions (Kafka does; Tansu 0.6 does not, see conftest.broker_hides_aborted).
    dirty = read_messages(bootstrap, {topics["output"]: 4}, n + proc.aborted_with,
                          "read_uncommitted")
    assert len(dirty) == n + proc.aborted_with
    clean = read_messages(bootstrap, {topics["output"]: 4}, n)
    assert len(clean) == (n if broker_hides_aborted else n + proc.aborted_with)
    assert results.messages == len(clean)
    # What a read_committed reader gets by the log's transaction markers, on any broker: each
    # id exactly once.
    log_ids = [r.key for r in read_committed_log(bootstrap, topics["output"], 4)]
    assert sorted(log_ids) == sorted(rid.encode() for rid, _, _ in reqs)
    dead = read_messages(bootstrap, {topics["dlq"]: 1}, 1)
    assert [m.value() for m in dead] == [b"not json"]
    assert _committed_total(bootstrap, topics["group"], topics["input"]) == n + 1
    proc.stop()
    t.join(60)
    assert rc == [0]
