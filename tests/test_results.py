"""The streaming results reader on a real broker, and `mgeo collect` built on it: typed results,
offsets committed as the caller goes, and the same file as `mgeo score` for the same results."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from conftest import FAST_GROUP, committed_offsets
from mgeo import wire
from mgeo.kafka import create_topics
from mgeo.producer.results import Result, ResultReader
from mgeo.tools.cli import main
from mgeo.tools.demo import sample_path

pytestmark = pytest.mark.broker

PROBS = {"not_match": 0.25, "partial_match": 0.25, "exact_match": 0.5}
FAST = {"session.timeout.ms": FAST_GROUP["MGEO_SESSION_TIMEOUT_MS"]}


def _topic(bootstrap: str, partitions: int = 1) -> str:
    name = f"results-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": bootstrap}, {name: partitions})
    return name


def _publish(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for v in values:
        p.produce(topic, value=v)
    assert p.flush(30) == 0


def _scored(i: int) -> bytes:
    return wire.encode_result(f"r{i}", PROBS, ["exact_match"], "m", False, {"n": i}, True)


def test_typed_results_in_order_and_garbage_skipped(bootstrap):
    topic = _topic(bootstrap)
    _publish(bootstrap, topic, [_scored(0), b"not json", b'{"no": "id"}',
                                wire.encode_error("e", wire.EMPTY_ADDRESS, "empty", "m"),
                                _scored(1)])
    with ResultReader(bootstrap, topic) as reader:
        got = list(reader.stream(idle_timeout=3))
    assert [r.id for r in got] == ["r0", "e", "r1"]
    assert all(isinstance(r, Result) for r in got)
    first, err = got[0], got[1]
    assert first.ok and first.label == "exact_match" and first.score == 0.5
    assert first.probs == PROBS and first.meta == {"n": 0} and first.model == "m"
    assert not err.ok and err.error_code == "empty_address" and err.score is None
    assert reader.messages == 5 and reader.unreadable == 2


def test_offsets_are_committed_as_the_caller_goes(bootstrap):
    topic, group = _topic(bootstrap), f"downstream-{uuid.uuid4().hex[:8]}"
    _publish(bootstrap, topic, [_scored(i) for i in range(10)])

    # Handled four, left cleanly: those four are committed, the rest is read next time.
    with ResultReader(bootstrap, topic, group, config=FAST) as reader:
        for n, res in enumerate(reader, 1):
            if n == 4:
                break
    assert committed_offsets(bootstrap, group, topic, 1) == {0: 4}

    # A failure while handling r6: r4 and r5 count, r6 is read again.
    with pytest.raises(RuntimeError):
        with ResultReader(bootstrap, topic, group, config=FAST) as reader:
            for res in reader:
                if res.id == "r6":
                    raise RuntimeError("downstream failed")
    assert committed_offsets(bootstrap, group, topic, 1) == {0: 6}

    # Periodic commits while iterating (commit_interval=0: at every read).
    reader = ResultReader(bootstrap, topic, group, config=FAST, commit_interval=0)
    seen = [r.id for r in reader.stream(idle_timeout=3)]
    assert seen == ["r6", "r7", "r8", "r9"]
    assert committed_offsets(bootstrap, group, topic, 1) == {0: 10}
    reader.close()


def test_unknown_topic_is_one_clear_error(bootstrap):
    from mgeo.kafka import KafkaUnavailable

    with pytest.raises(KafkaUnavailable, match="create it first"):
        ResultReader(bootstrap, f"missing-{uuid.uuid4().hex[:8]}", check_timeout=5)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_score_and_collect_write_identical_files(bootstrap, tmp_path, suffix, capsys):
    """Finding 2: the same results, once from `mgeo score` and once published (as the worker
    publishes them) and read back by `mgeo collect`, make byte-identical files."""
    scored_jsonl, scored = tmp_path / "scored.jsonl", tmp_path / f"scored{suffix}"
    for out in {scored_jsonl, scored}:
        assert main(["score", "--in", str(sample_path()), "--out", str(out), "--device", "cpu",
                     "--no-progress"]) == 0
    values = scored_jsonl.read_bytes().splitlines()
    assert len(values) == 300
    topic = _topic(bootstrap)
    _publish(bootstrap, topic, values)  # one partition: collected in the order published
    collected = tmp_path / f"collected{suffix}"
    assert main(["collect", "--bootstrap-servers", bootstrap, "--output-topic", topic,
                 "--out", str(collected), "--expect", "300", "--timeout", "30",
                 "--no-progress"]) == 0
    assert collected.read_bytes() == scored.read_bytes()
