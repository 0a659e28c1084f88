"""The Kafka loop's behaviour (no torch: a small deterministic engine), one body a test, run on
the in-memory broker and on the embedded real one (tests/backends.py). The real-broker runs are
`slow`; tests that drive rebalances by hand are in-memory only (test_processor.py), the real
broker's own contract and faults have theirs (test_failure_modes.py, test_faults.py)."""

from __future__ import annotations

import time

import pytest

from backends import KafkaBackend, MemoryBackend
from engines import RuleEngine
from mgeo import wire
from mgeo.worker.stream.processor import StreamProcessor


@pytest.fixture(params=["memory", pytest.param("kafka", marks=[pytest.mark.broker,
                                                              pytest.mark.slow])])
def backend(request):
    if request.param == "memory":
        return MemoryBackend()
    bootstrap = request.getfixturevalue("bootstrap")
    return KafkaBackend(bootstrap, request.getfixturevalue("topics"),
                        request.getfixturevalue("broker_hides_aborted"))


def test_poison_pair_gets_an_error_and_the_rest_are_scored(backend):
    reqs = [(f"r{i}", f"地址{i}", f"地址{i}" if i % 2 else "别处") for i in range(40)]
    reqs[17] = ("bad", "有毒的地址", "地址")
    backend.publish(reqs)
    proc = backend.processor(backend.settings(max_messages=40), RuleEngine())
    t, rc = backend.start(proc)
    results = backend.results(40)
    t.join(60)
    assert rc == [0]
    assert results["bad"]["error"]["code"] == wire.SCORING_FAILED
    scored = [r for r in results.values() if "error" not in r]
    assert len(scored) == 39
    assert all(r["label"] == ("exact_match" if int(r["id"][1:]) % 2 else "not_match")
               for r in scored)
    assert backend.committed_total() == 40


@pytest.mark.parametrize("n", [1, 10])  # 1: a quiet topic, one request a batch
def test_broken_engine_stops_the_worker_without_committing(backend, n):
    backend.publish([(f"r{i}", "甲", "乙") for i in range(n)])
    proc = backend.processor(backend.settings(), RuleEngine(broken=True))
    t, rc = backend.start(proc)
    t.join(90)
    assert rc == [1]
    assert backend.committed_values("output") == []
    assert backend.committed_total() == 0


def test_pauses_when_full_and_answers_everything_after(backend):
    engine = RuleEngine()
    engine.gate.clear()  # inference blocks until the test opens the gate
    backend.publish([(f"r{i}", "甲", "甲") for i in range(300)])
    proc = backend.processor(backend.settings(max_inflight=50, consume_batch=20,
                                              max_messages=300), engine)
    t, rc = backend.start(proc)
    with proc.progress:  # woken by every move of the loop's work; bounded
        proc.progress.wait_for(lambda: proc._paused, 30)
    assert proc._paused and proc.tracker.inflight >= 50
    assert proc.stats.consumed < 300  # it stopped reading instead of buffering everything
    engine.gate.set()
    t.join(120)
    assert rc == [0] and proc.stats.answered == 300
    # It stayed in the group the whole time: one assignment, no loss, one revoke at shutdown.
    assert (proc.stats.assignments, proc.stats.losses, proc.stats.revocations) == (1, 0, 1)


def test_a_topic_of_garbage_stops_the_worker_instead_of_draining_it(backend):
    backend.publish_values([(None, b"<xml>not ours</xml>")] * 100)
    proc = backend.processor(backend.settings(dead_letter_window=20, max_dead_letter_ratio=0.5),
                             RuleEngine())
    t, rc = backend.start(proc)
    t.join(90)
    assert rc == [1]
    # Stopped at the verdict instead of draining the topic into the dead-letter queue.
    assert proc.stats.dead_letters < 100
    assert backend.committed_total() < 100


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_an_unwritable_results_topic_advances_no_offsets(backend, delivery):
    reqs = [(f"r{i}", f"地址{i}", "别处") for i in range(30)]
    backend.publish(reqs)
    # Every answer fails, transiently.
    broken = backend.settings(output_topic=backend.unwritable(), delivery=delivery,
                              transactional_id=backend.topics["group"])
    proc = backend.processor(broken, RuleEngine())
    t, rc = backend.start(proc)

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
    assert backend.committed_total() == 0
    # Nothing was lost: a worker with a writable results topic answers every request.
    fixed = backend.processor(backend.settings(max_messages=len(reqs)), RuleEngine())
    t, rc = backend.start(fixed)
    t.join(60)
    assert rc == [0]
    assert set(backend.results(len(reqs), timeout=30)) == {rid for rid, _, _ in reqs}


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


def test_exactly_once_abort_rewinds_and_answers_each_id_once(backend):
    n = 300
    reqs = [(f"r{i}", f"地址{i}", f"地址{i}" if i % 2 else "别处") for i in range(n)]
    # Early answers (error results, dead letters) wait for the pairs before them in the
    # transaction, so an abort cannot leave them committed without their offsets.
    reqs[5] = ("empty", "", "地址")
    backend.publish(reqs)
    backend.publish_values([(None, b"not json")])
    engine = RuleEngine()
    engine.gate.clear()  # hold inference until the abort is armed
    proc = backend.processor(backend.settings(delivery="exactly-once",
                                              transactional_id=backend.topics["group"]), engine)
    t, rc = backend.start(proc)
    with proc.progress:  # bounded: the delivery step exists once the clients are up
        assert proc.progress.wait_for(lambda: proc.delivery is not None, 30)
    seen = _abort_first_transaction(proc)
    engine.gate.set()
    assert set(backend.results(n)) == {rid for rid, _, _ in reqs}
    assert seen["aborted_with"] > 0 and proc.stats.aborts == 1
    # The aborted answers reached the broker: a read_uncommitted reader sees them and the
    # answers again. A read_committed reader sees each id once, where the broker filters
    # aborted transactions (Kafka does; Tansu 0.6 does not, see conftest.broker_hides_aborted).
    assert len(backend.every_record("output", n + seen["aborted_with"])) \
        == n + seen["aborted_with"]
    clean = backend.read_committed("output", n)
    assert len(clean) == (n if backend.hides_aborted else n + seen["aborted_with"])
    # What a read_committed reader gets by the log's transaction markers, on any broker: each
    # id exactly once.
    assert sorted(backend.committed_keys("output")) == sorted(rid.encode() for rid, _, _ in reqs)
    assert backend.committed_values("dlq") == [b"not json"]
    assert backend.committed_total() == n + 1
    proc.stop()
    t.join(60)
    assert rc == [0]
