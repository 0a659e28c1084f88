"""The Kafka loop's logic without a broker: in-memory clients (tests/memory_kafka.py), the test
deciding when rebalances happen and when the engine may finish. Every guarantee tested here is
also tested against the real broker (test_loop.py, test_faults.py, test_failure_modes.py)."""

from __future__ import annotations

import threading

import orjson
import pytest
from confluent_kafka import KafkaError

from engines import RuleEngine
from memory_kafka import MemoryBroker, clients
from mgeo import wire
from mgeo.settings import WorkerSettings
from mgeo.worker.stream.delivery import STUB, STUB_SIZE
from mgeo.worker.stream.processor import StreamProcessor
from mgeo.worker.stream.scoring import Scorer

IN = [("in", 0), ("in", 1), ("in", 2)]
WAIT = 30  # seconds: a bound on event waits, never a duration the test depends on


class Harness:
    def __init__(self, engine=None, **settings):
        self.broker = MemoryBroker()
        for topic, n in (("in", 3), ("out", 3), ("dlq", 1)):
            self.broker.create(topic, n)
        self.engine = engine or RuleEngine()
        settings = {"commit_interval": 0.05, "poll_timeout": 0.05, **settings}
        s = WorkerSettings(input_topic="in", output_topic="out", dlq_topic="dlq",
                           group_id="g", stats_interval_ms=0, **settings)
        factories, self.made = clients(self.broker)
        self.proc = StreamProcessor(s, Scorer(self.engine), clients=factories)
        self.rc: list[int] = []
        self.thread = threading.Thread(target=lambda: self.rc.append(self.proc.run()),
                                       daemon=True)
        self.broker.listeners.append(self.proc.progress)
        self.thread.start()
        self.until(lambda: "consumer" in self.made and self.proc.stage is not None)

    @property
    def consumer(self):
        return self.made["consumer"]

    @property
    def producer(self):
        return self.made["producer"]

    def until(self, pred, what: str = "the condition") -> None:
        """Wait, woken by every change of the broker and every move of the processor's work
        (its `progress` condition), until `pred()` holds."""
        with self.proc.progress:
            assert self.proc.progress.wait_for(pred, WAIT), f"timed out waiting for {what}"

    def rebalance(self, kind: str, tps) -> threading.Event:
        return self.consumer.rebalance(kind, list(tps))

    def assign(self, tps=IN) -> None:
        assert self.rebalance("assign", tps).wait(WAIT)

    def send(self, partition: int, ids, a: str = "甲", b: str = "甲", value: bytes | None = None):
        for rid in ids:
            self.broker.append("in", partition, rid.encode(),
                               value if value is not None else wire.encode_request(rid, a, b))

    def read(self, partition: int) -> None:
        """Wait until the loop has read everything of `partition`."""
        tp = ("in", partition)
        self.until(lambda: self.consumer.positions.get(tp) == len(self.broker.logs[tp]),
                   f"in[{partition}] read")

    def answers(self, topic: str = "out") -> list[dict]:
        return [orjson.loads(m.value()) for m in self.broker.visible(topic)]

    def answered_ids(self) -> list[str]:
        return sorted(a["id"] for a in self.answers())

    def stop(self, hurry: bool = False) -> int:
        (self.proc.hurry if hurry else self.proc.stop)()
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        return self.rc[0]


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_a_scored_batch_is_published_while_the_loop_waits_in_poll():
    h = Harness(poll_timeout=10)  # a poll that would hold answers back for 10 s
    h.assign()
    h.engine.gate.clear()
    h.send(0, ["a"])
    h.until(lambda: h.proc.stage.busy({("in", 0)}) and h.broker.consumer_waiting,
            "the loop back in its 10 s poll with the batch under way")
    h.engine.gate.set()
    h.until(lambda: len(h.broker.visible("out")) == 1, "the answer")
    # Produced by the inference thread while the loop was still blocked in that poll: no
    # poll timeout stands between a finished batch and its answers.
    assert h.producer.produced_while_consumer_waiting == [True]
    assert h.stop() == 0


def test_revoke_drops_queued_work_and_commits_the_work_under_way():
    engine = RuleEngine()
    engine.device = "gpu"  # the stage then prepares one batch while another is on the model
    h = Harness(engine=engine)
    h.assign()
    h.engine.gate.clear()
    units = h.proc.stage._busy  # units taken by the pipeline, by partition
    h.send(0, ids("a", 3))                     # unit A: on the model (blocked at the gate)
    h.until(lambda: units[("in", 0)] == 1 and h.proc.stage.depths()["prepared"] == 0,
            "A on the model")
    h.send(1, ids("b", 3))                     # unit B: prepared, waiting for the model
    h.until(lambda: h.proc.stage.depths()["prepared"] == 1, "B prepared")
    h.send(1, ids("c", 3))                     # units C and D: queued (the pipeline is full)
    h.read(1)
    h.send(1, ids("d", 3))
    h.read(1)
    h.until(lambda: h.proc.stage.depths()["intake"] == 6, "C and D queued")
    revoked = h.rebalance("revoke", [("in", 1)])
    h.until(lambda: h.proc.stats.revocations == 1, "the revoke under way")
    assert not revoked.is_set()  # it waits for B, under way
    h.engine.gate.set()
    assert revoked.wait(WAIT)
    assert h.broker.committed[("in", 1)] == 3  # B answered and committed; C and D not
    assert set(h.answered_ids()) >= set(ids("a", 3) + ids("b", 3))
    assert not set(h.answered_ids()) & set(ids("c", 3) + ids("d", 3))
    h.assign([("in", 1)])                      # back to us: C and D are read again
    h.until(lambda: set(ids("c", 3) + ids("d", 3)) <= {a["id"] for a in h.answers()},
            "C and D answered")
    assert h.stop() == 0
    assert sorted(h.answered_ids()) == sorted(ids("a", 3) + ids("b", 3) + ids("c", 3)
                                              + ids("d", 3))
    assert h.proc.tracker.inflight == 0


def test_on_a_cpu_a_batch_is_taken_only_when_the_model_is_free():
    h = Harness()  # RuleEngine runs on "cpu"
    h.assign()
    h.engine.gate.clear()
    h.send(0, ["a0"])
    h.until(lambda: h.proc.stage.busy({("in", 0)}), "the first batch on the model")
    for i in range(1, 4):  # three more polls while the model is busy
        h.send(0, [f"a{i}"])
        h.read(0)
    h.until(lambda: h.proc.stage.depths()["intake"] == 3, "the rest queued")
    assert h.proc.stage.depths()["prepared"] == 0  # nothing cut early
    calls = h.engine.calls
    h.engine.gate.set()
    h.until(lambda: len(h.answers()) == 4, "every answer")
    assert h.engine.calls == calls + 1  # the three waiting polls made one batch
    assert h.stop() == 0


class LaneEngine(RuleEngine):
    """Two lanes; a batch holding "slow" waits at its gate until the test opens it."""

    lanes = 2

    def __init__(self):
        super().__init__()
        self.slow = threading.Event()

    def forward(self, pairs):
        if any("slow" in a for a, _ in pairs):
            assert self.slow.wait(WAIT), "the slow batch was never let go"
        return super().forward(pairs)


def test_with_two_lanes_a_batch_is_answered_while_an_earlier_one_is_still_scored():
    h = Harness(engine=LaneEngine())
    h.assign()
    h.send(0, ["s0"], a="slow", b="slow")
    h.until(lambda: h.proc.stage.busy({("in", 0)}), "the slow batch on a lane")
    h.send(1, ["f0", "f1"])
    # The second batch takes the other lane and is answered; the first still holds its lane.
    h.until(lambda: h.answered_ids() == ["f0", "f1"], "the later batch answered first")
    assert h.proc.stage.busy({("in", 0)})
    h.until(lambda: h.broker.committed.get(("in", 1)) == 2, "in[1] committed")
    assert ("in", 0) not in h.broker.committed  # nothing of in[0] is final yet
    h.engine.slow.set()
    h.until(lambda: len(h.answers()) == 3, "every answer")
    h.until(lambda: h.broker.committed.get(("in", 0)) == 1, "in[0] committed")
    assert h.stop() == 0


def test_stopping_with_two_lanes_finishes_both_and_stops_every_thread():
    h = Harness(engine=LaneEngine())
    h.assign()
    h.send(0, ["s0"], a="slow", b="slow")
    h.until(lambda: h.proc.stage.busy({("in", 0)}), "the slow batch on a lane")
    h.send(1, ["f0"])
    h.until(lambda: h.answered_ids() == ["f0"], "the other lane's answer")
    h.proc.stop()
    h.engine.slow.set()
    assert h.stop() == 0
    assert h.answered_ids() == ["f0", "s0"]
    assert not any(t.is_alive() for t in h.proc.stage._threads)


def test_no_answer_is_sent_for_a_partition_after_it_was_lost():
    h = Harness()
    h.assign()
    h.engine.gate.clear()
    h.send(0, ids("a", 4))
    h.until(lambda: h.proc.stage.busy({("in", 0)}), "the batch on the model")
    assert h.rebalance("lost", [("in", 0)]).wait(WAIT)
    assert h.proc.tracker.inflight == 0
    h.engine.gate.set()
    h.until(lambda: not h.proc.stage.busy({("in", 0)}), "the batch done")
    assert h.answers() == [] and ("in", 0) not in h.broker.committed
    assert h.stop() == 0


def test_pause_holds_across_a_rebalance_and_the_inflight_count_stays_exact():
    h = Harness(max_inflight=6, consume_batch=2)
    h.assign([("in", 0), ("in", 1)])
    h.engine.gate.clear()
    h.send(0, ids("a", 10))
    h.until(lambda: h.proc._paused, "the pause")
    assert h.rebalance("assign", [("in", 2)]).wait(WAIT)  # a new partition while paused
    assert ("in", 2) in h.consumer.paused
    h.send(2, ids("c", 2))
    assert h.rebalance("revoke", [("in", 1)]).wait(WAIT)  # nothing of in[1] was read
    h.engine.gate.set()
    h.until(lambda: len(h.answers()) == 12, "every answer")
    h.until(lambda: h.proc.tracker.inflight == 0 and not h.proc._paused, "the resume")
    assert not h.consumer.paused & set(h.consumer.positions)  # every partition held is read
    assert h.stop() == 0


def test_a_partition_lost_while_paused_is_read_when_it_comes_back():
    """Issue 18: librdkafka keeps the pause flag of a lost partition; given back after the
    back-pressure ended, it must be read again."""
    h = Harness(max_inflight=4, consume_batch=2)
    h.assign([("in", 0)])
    h.engine.gate.clear()
    h.send(0, ids("a", 10))
    h.until(lambda: h.proc._paused, "the pause")
    assert h.rebalance("lost", [("in", 0)]).wait(WAIT)
    h.until(lambda: not h.proc._paused, "the resume of what is held (nothing)")
    h.assign([("in", 0)])
    h.engine.gate.set()
    h.until(lambda: h.broker.committed.get(("in", 0)) == 10, "every offset committed")
    assert h.answered_ids() == sorted(ids("a", 10))
    assert h.stop() == 0


def test_a_broken_engine_stops_on_one_pair_batches_and_commits_nothing():
    h = Harness(engine=RuleEngine(broken=True))
    h.assign()
    h.send(0, ["only"])  # a quiet topic: one request a batch
    h.thread.join(WAIT)
    assert h.rc == [1]
    assert h.answers() == [] and h.broker.committed == {}


def test_two_unscorable_pairs_alone_are_answered_and_the_worker_goes_on():
    h = Harness()
    h.assign()
    h.send(0, ["x", "y"], a="有毒")  # a batch of nothing but unscorable pairs
    h.until(lambda: len(h.answers()) == 2, "their answers")
    h.send(0, ["ok"])
    h.until(lambda: len(h.answers()) == 3, "the next answer")
    codes = {a["id"]: a.get("error", {}).get("code") for a in h.answers()}
    assert codes == {"x": wire.SCORING_FAILED, "y": wire.SCORING_FAILED, "ok": None}
    assert h.stop() == 0
    assert h.broker.committed[("in", 0)] == 3


def test_a_second_signal_cuts_a_revoke_wait_short():
    h = Harness(shutdown_timeout=600)
    h.assign()
    h.engine.gate.clear()
    h.send(0, ids("a", 2))
    h.until(lambda: h.proc.stage.busy({("in", 0)}), "the batch on the model")
    revoked = h.rebalance("revoke", [("in", 0)])
    h.until(lambda: h.proc.stats.revocations == 1, "the revoke waiting for the batch")
    h.proc.hurry()
    assert revoked.wait(WAIT)  # the engine is still blocked: the wait was cut short
    assert h.engine.gate.is_set() is False
    h.thread.join(WAIT)
    assert h.rc == [0]
    assert ("in", 0) not in h.broker.committed  # unanswered: read again by the next owner
    h.engine.gate.set()


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_dead_letter_too_large_to_write_becomes_a_bounded_stub(delivery):
    h = Harness(delivery=delivery, transactional_id="t")
    h.assign()
    big = b"\xff" * 1_040_000  # not JSON: a dead letter, over the producer's 1,000,000 bytes
    h.send(0, ids("a", 5))
    h.broker.append("in", 0, b"big", big)
    h.send(0, ids("b", 5))
    h.until(lambda: h.broker.committed.get(("in", 0)) == 11, "every offset committed")
    (stub,) = h.broker.visible("dlq")
    headers = dict(stub.headers())
    assert len(stub.value()) <= 1024 and headers[STUB] == b"true"
    assert headers[STUB_SIZE] == b"1040000" and headers["mgeo.source.offset"] == b"5"
    assert h.answered_ids() == sorted(ids("a", 5) + ids("b", 5))
    assert h.proc.stats.dead_letters == 1 and h.proc.stats.substituted == 1
    assert h.stop() == 0


def test_exactly_once_replaces_an_answer_the_broker_refuses_after_one_abort():
    h = Harness(delivery="exactly-once", transactional_id="t")
    h.broker.max_record_bytes = 2000  # the broker's limit is below the client's
    h.assign()
    h.send(0, ids("a", 3))
    meta = {"note": "x" * 3000}  # echoed in the result: too large for the broker
    h.broker.append("in", 0, b"m", orjson.dumps({"id": "m", "addr1": "甲", "addr2": "甲",
                                                 "meta": meta}))
    h.send(0, ids("b", 3))
    h.until(lambda: h.broker.committed.get(("in", 0)) == 7, "every offset committed")
    answers = {a["id"]: a for a in h.answers()}
    assert sorted(answers) == sorted(ids("a", 3) + ["m"] + ids("b", 3))  # each id once
    assert answers["m"]["error"]["code"] == "result_undeliverable"
    assert h.proc.stats.aborts == 1
    assert h.proc.stats.answered == 7  # counted when committed, not when produced
    assert h.stop() == 0


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_results_topic_that_refuses_everything_stops_the_worker(delivery):
    """Each answer is replaced by its substitute once; when that is refused too, the worker
    stops. Delivery reports carry no headers (issue 18: a check that looked for the
    substitute's header in them substituted forever)."""
    h = Harness(delivery=delivery, transactional_id="t")
    h.broker.refuse_topics["out"] = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                               "not authorized")
    h.assign()
    h.send(0, ids("a", 3))
    h.thread.join(WAIT)
    assert h.rc == [1]
    assert ("in", 0) not in h.broker.committed
    assert h.proc.stats.substituted <= 3  # each answer's substitute tried once at most
    assert "bounded substitute" in str(h.proc.failure)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_request_with_an_oversized_key_is_answered_by_a_bounded_substitute(delivery):
    """Issue 18: a key that fits the broker but not the producer's message.max.bytes made the
    substitute (which kept the key) unwritable too, and every worker crash-looped on it."""
    h = Harness(delivery=delivery, transactional_id="t")
    h.assign()
    h.send(0, ids("a", 3))
    big = b"k" * 1_000_100
    h.broker.append("in", 0, big, wire.encode_request("big", "甲", "甲"))
    h.broker.append("in", 0, big + b"!", b"not json")  # a dead letter with the same key
    h.send(0, ids("b", 3))
    h.until(lambda: h.broker.committed.get(("in", 0)) == 8, "every offset committed")
    answers = {a["id"]: a for a in h.answers()}
    assert sorted(answers) == sorted(ids("a", 3) + ["big"] + ids("b", 3))
    assert answers["big"]["error"]["code"] == "result_undeliverable"
    (stub,) = h.broker.visible("dlq")
    assert dict(stub.headers())[STUB] == b"true"
    for m in h.broker.visible("out") + [stub]:
        assert len(m.key()) <= 1024 and len(m.value()) <= 2048
        assert all(len(v) <= 1024 for _, v in m.headers() or [])
    assert h.proc.stats.substituted == 2 and h.proc.stats.answered == 8
    assert h.stop() == 0


def test_a_transient_delivery_error_is_retried_and_commits_nothing_meanwhile():
    h = Harness()
    h.broker.refuse_topics["out"] = KafkaError(KafkaError._MSG_TIMED_OUT, "timed out")
    h.assign()
    h.send(0, ids("a", 3))
    h.until(lambda: h.proc.stats.delivery_retries >= 6, "retries")
    assert ("in", 0) not in h.broker.committed
    del h.broker.refuse_topics["out"]
    h.until(lambda: h.broker.committed.get(("in", 0)) == 3, "the commit once it passes")
    assert h.answered_ids() == ids("a", 3)
    assert h.stop() == 0
