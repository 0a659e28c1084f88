"""tests/kafka_log.py against the real test broker: read_committed computed from the raw log."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import kafka_log
from kafka_log import Record, read_committed_log
from mgeo.kafka import create_topics

pytestmark = pytest.mark.broker


def fresh_topic(bootstrap: str, partitions: int = 1) -> str:
    name = f"klog-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": bootstrap}, {name: partitions})
    return name


class Sent:
    """Delivery reports of one producer: the offsets the broker gave each record."""

    def __init__(self):
        self.offsets: list[tuple[int, int]] = []  # (partition, offset), in delivery order

    def __call__(self, err, msg):
        assert err is None, err
        self.offsets.append((msg.partition(), msg.offset()))


@pytest.fixture()
def producers():
    made: list[Producer] = []

    def make(bootstrap: str, **conf) -> Producer:
        p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, **conf})
        if "transactional.id" in conf:
            p.init_transactions(30)
        made.append(p)
        return p

    yield make
    for p in made:
        p.flush(10)
        close = getattr(p, "close", None)  # confluent-kafka >= 2.12; GC closes older ones
        if close is not None:
            close()


def values(records: list[Record]) -> list[bytes | None]:
    return [r.value for r in records]


def test_aborted_then_committed_returns_only_committed(bootstrap, producers):
    topic = fresh_topic(bootstrap)
    p = producers(bootstrap, **{"transactional.id": f"{topic}-tx"})
    p.begin_transaction()
    p.produce(topic, b"A1", partition=0)
    p.produce(topic, b"A2", partition=0)
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, b"B", key=b"k", partition=0, headers=[("h", b"1")])
    p.commit_transaction(30)

    # Offsets 0-1 are A1/A2, 2 the ABORT marker, 3 B, 4 the COMMIT marker.
    assert read_committed_log(bootstrap, topic, 1) == [
        Record(partition=0, offset=3, key=b"k", value=b"B", headers=(("h", b"1"),))]


def test_non_transactional_records_all_returned(bootstrap, producers):
    topic = fresh_topic(bootstrap)
    sent = Sent()
    p = producers(bootstrap)
    rows = [
        (b"k0", b"v0", None),
        (None, b"no key", [("a", b"1")]),
        (b"tombstone", None, [("a", b"1"), ("a", b"2"), ("empty", b""), ("null", None)]),
        (b"", b"", None),
        ("unicode-键".encode(), "值".encode(), [("ключ", "значение".encode())]),
    ]
    for i, (key, value, headers) in enumerate(rows):
        p.produce(topic, value, key=key, partition=0, headers=headers, on_delivery=sent)
        if i % 2:  # several record batches, not one
            p.flush(30)
    p.flush(30)

    got = read_committed_log(bootstrap, topic, 1)
    assert [(r.partition, r.offset) for r in got] == sent.offsets == [(0, i) for i in range(5)]
    assert [(r.key, r.value, r.headers) for r in got] == [
        (key, value, tuple(headers or ())) for key, value, headers in rows]

    # The same as librdkafka's read_committed reading (it agrees where nothing was aborted).
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                  "isolation.level": "read_committed", "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        msgs = []
        for _ in range(40):
            msgs += [m for m in c.consume(10, 0.5) if m.error() is None]
            if len(msgs) >= len(rows):
                break
    finally:
        c.close()
    assert [(m.offset(), m.key(), m.value(), tuple(m.headers() or ())) for m in msgs] == [
        (r.offset, r.key, r.value, r.headers) for r in got]


def test_open_transaction_hides_itself_and_everything_after(bootstrap, producers):
    topic = fresh_topic(bootstrap)
    plain = producers(bootstrap)
    plain.produce(topic, b"before-1", partition=0)
    plain.produce(topic, b"before-2", partition=0)
    plain.flush(30)

    open_tx = producers(bootstrap, **{"transactional.id": f"{topic}-open"})
    open_tx.begin_transaction()
    open_tx.produce(topic, b"open", partition=0)
    open_tx.flush(30)

    plain.produce(topic, b"after", partition=0)
    plain.flush(30)
    # A transaction that starts and commits after the open one started is past the LSO too.
    later = producers(bootstrap, **{"transactional.id": f"{topic}-later"})
    later.begin_transaction()
    later.produce(topic, b"later-committed", partition=0)
    later.commit_transaction(30)

    assert values(read_committed_log(bootstrap, topic, 1)) == [b"before-1", b"before-2"]

    # Once the open transaction ends, the LSO moves on: everything after it shows.
    open_tx.abort_transaction(30)
    assert values(read_committed_log(bootstrap, topic, 1)) == [
        b"before-1", b"before-2", b"after", b"later-committed"]


@pytest.mark.parametrize("aborted_first", [True, False])
def test_interleaved_transactions_of_two_producers(bootstrap, producers, aborted_first):
    topic = fresh_topic(bootstrap)
    doomed = producers(bootstrap, **{"transactional.id": f"{topic}-doomed"})
    kept = producers(bootstrap, **{"transactional.id": f"{topic}-kept"})
    sent = Sent()
    doomed.begin_transaction()
    kept.begin_transaction()
    for i in range(3):  # alternate batches of the two transactions on one partition
        doomed.produce(topic, b"doomed-%d" % i, partition=0)
        doomed.flush(30)
        kept.produce(topic, b"kept-%d" % i, key=b"%d" % i, partition=0, on_delivery=sent)
        kept.flush(30)
    if aborted_first:
        doomed.abort_transaction(30)
        kept.commit_transaction(30)
    else:
        kept.commit_transaction(30)
        doomed.abort_transaction(30)

    got = read_committed_log(bootstrap, topic, 1)
    assert values(got) == [b"kept-0", b"kept-1", b"kept-2"]
    assert [r.key for r in got] == [b"0", b"1", b"2"]
    assert [(r.partition, r.offset) for r in got] == sent.offsets


def test_multiple_partitions(bootstrap, producers):
    topic = fresh_topic(bootstrap, partitions=4)
    plain = producers(bootstrap)
    tx = producers(bootstrap, **{"transactional.id": f"{topic}-tx"})
    plain.produce(topic, b"p0-plain", partition=0)
    plain.produce(topic, b"p2-plain", partition=2)
    plain.flush(30)
    tx.begin_transaction()  # spans partitions 0 and 1, aborted
    tx.produce(topic, b"p0-aborted", partition=0)
    tx.produce(topic, b"p1-aborted", partition=1)
    tx.flush(30)
    tx.abort_transaction(30)
    tx.begin_transaction()  # spans partitions 1 and 2, committed
    tx.produce(topic, b"p1-committed", partition=1)
    tx.produce(topic, b"p2-committed", partition=2)
    tx.commit_transaction(30)
    plain.produce(topic, b"p0-plain-2", partition=0)
    plain.flush(30)
    # partition 3 stays empty

    got = read_committed_log(bootstrap, topic, 4)
    assert [(r.partition, r.value) for r in got] == [
        (0, b"p0-plain"), (0, b"p0-plain-2"),
        (1, b"p1-committed"),
        (2, b"p2-plain"), (2, b"p2-committed"),
    ]
    assert got == sorted(got, key=lambda r: (r.partition, r.offset))
    assert read_committed_log(bootstrap, topic, 2) == [r for r in got if r.partition < 2]


def test_reads_a_partition_larger_than_one_fetch(bootstrap, producers, monkeypatch):
    topic = fresh_topic(bootstrap)
    tx = producers(bootstrap, **{"transactional.id": f"{topic}-tx"})
    blob = b"x" * 200_000
    expected = []
    for i in range(8):  # ~3.2 MB in all; partition_max_bytes is 1 MiB a fetch
        tx.begin_transaction()
        tx.produce(topic, blob + b"%d" % i, partition=0)
        tx.produce(topic, b"small-%d" % i, partition=0)
        tx.flush(30)
        if i % 3 == 1:
            tx.abort_transaction(30)
        else:
            tx.commit_transaction(30)
            expected += [blob + b"%d" % i, b"small-%d" % i]

    fetches = []
    real_call = kafka_log._Connection.call

    def counting_call(self, request, deadline):
        if type(request).__name__.startswith("FetchRequest"):
            fetches.append(request)
        return real_call(self, request, deadline)

    monkeypatch.setattr(kafka_log._Connection, "call", counting_call)
    assert values(read_committed_log(bootstrap, topic, 1)) == expected
    assert len(fetches) > 1


def test_empty_topic_and_bad_partition_count(bootstrap):
    topic = fresh_topic(bootstrap, partitions=2)
    assert read_committed_log(bootstrap, topic, 2) == []
    with pytest.raises(ValueError, match="has 2 partitions"):
        read_committed_log(bootstrap, topic, 3, timeout=10)
