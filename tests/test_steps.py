"""The steps' contract: what passes between them is immutable, every step speaks the one
contract, both delivery modes share the answers module and one lifecycle."""

from __future__ import annotations

import dataclasses
import threading

import pytest

from engines import RuleEngine
from memory_kafka import MemoryBroker, MemoryProducer
from mgeo import wire
from mgeo.logs import RateLimitedLog
from mgeo.settings import WorkerSettings
from mgeo.worker.stream.answers import STUB, Answer, Answers, Kind, Tally
from mgeo.worker.stream.compose import Wiring, compose
from mgeo.worker.stream.events import Control, Stats
from mgeo.worker.stream.intake import Unit
from mgeo.worker.stream.offsets import OffsetTracker, Segment
from mgeo.worker.stream.scoring import Scorer
from mgeo.worker.stream.step import Step


def _steps(delivery: str):
    broker = MemoryBroker()
    for topic in ("in", "out", "dlq"):
        broker.create(topic, 1)
    s = WorkerSettings(input_topic="in", output_topic="out", dlq_topic="dlq", group_id="g",
                       delivery=delivery, transactional_id="t")
    return compose(Wiring(s, Scorer(RuleEngine()), MemoryProducer(broker, {}),
                          OffsetTracker(), Stats(), Control()))


def _delivery_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "delivery"]


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_every_step_speaks_the_contract_and_both_modes_start_alike(delivery):
    before = len(_delivery_threads())
    steps = _steps(delivery)
    for step in (steps.intake, steps.inference, steps.delivery):
        assert isinstance(step, Step), type(step).__name__
    # Nothing runs before `start` (at-least-once used to start its thread when built).
    assert len(_delivery_threads()) == before
    assert steps.delivery.start() is True
    assert len(_delivery_threads()) == before + 1
    steps.delivery.close()
    assert steps.delivery.join(5)


def test_what_passes_between_steps_is_immutable():
    tracker = OffsetTracker()
    tracker.assign(("in", 0))
    seg = tracker.add(("in", 0), 0, 1, 1)
    unit = Unit((), {0: seg}, (), (), {}, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        unit.values = (b"x",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        seg.end = 5
    answer = Answer(0, "out", b"v", b"k", None, Kind.RESULT, "in[0]@0")
    with pytest.raises(AttributeError):
        answer.topic = "elsewhere"
    scored = dataclasses.replace(unit, values=(b"x",))
    assert unit.values is None and scored.values == (b"x",)


def test_one_substitute_and_one_settling_for_both_modes():
    stats, tracker = Stats(), OffsetTracker()
    answers = Answers(output_topic="out", dlq_topic="dlq", model_name="m", stats=stats,
                      tracker=tracker, ratelog=RateLimitedLog(__import__("logging").getLogger()))
    big = Answer(3, "dlq", b"x" * 10_000, b"k" * 5000, [(wire.DLQ_REASON, b"r" * 5000)],
                 Kind.DEAD_LETTER, "in[0]@3")
    stub = answers.substitute(big, "too large")
    assert stub.substitute and stub.kind is Kind.DEAD_LETTER and stub.index == 3
    assert len(stub.value) <= 1024 and len(stub.key) <= 1024
    assert dict(stub.headers)[STUB] == b"true"
    err = answers.substitute(Answer(1, "out", wire.encode_error("id1", "c", "m", "m"), None,
                                    None, Kind.ERROR, "in[0]@1"), "refused")
    assert err.kind is Kind.ERROR and answers.kind("out", err.value) is Kind.ERROR
    assert stats.substituted == 2
    tracker.assign(("in", 0))
    seg = tracker.add(("in", 0), 0, 3, 3)
    tally = Tally()
    for kind in (Kind.RESULT, Kind.ERROR, Kind.DEAD_LETTER):
        tally.add(kind)
    assert answers.settle(seg, tally) and not answers.settle(seg, tally)  # once only
    assert (stats.answered, stats.scored, stats.error_results, stats.dead_letters) == (3, 1, 1, 1)


def test_a_fatal_error_is_never_the_answers_fault():
    """A fenced (fatal) producer refuses every produce with "Local: Fatal error": substituting
    the answer, then stopping on "cannot write even a bounded substitute", hid the fencing
    from the user (CI saw it when the produce came before the transaction call)."""
    from confluent_kafka import KafkaError, KafkaException

    from mgeo.worker.stream.answers import is_fatal, is_permanent
    from mgeo.worker.stream.intake import FatalStop

    for code in (KafkaError._FATAL, KafkaError._FENCED):
        err = KafkaError(code, fatal=code == KafkaError._FATAL)
        assert is_fatal(err) and not is_permanent(err)
    assert is_permanent(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

    class Fenced:
        def produce(self, *args, **kwargs):
            raise KafkaException(KafkaError(KafkaError._FATAL, "Fatal error", fatal=True))

    delivery = _steps("exactly-once").delivery
    delivery.producer = Fenced()
    answer = Answer(0, "out", b"v", b"k", None, Kind.RESULT, "in[0]@0")
    with pytest.raises(FatalStop, match="fenced, another worker uses the same transactional"):
        delivery._produce(None, answer)
