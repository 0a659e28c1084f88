"""An in-memory stand-in for confluent-kafka's Consumer and Producer, for the processor's unit
tests (the way Arroyo tests its strategies on a local broker): partitions are lists, the test
decides when rebalances happen, and every delivery guarantee keeps its test against the real
broker as well.

Only what the processor uses is here, with the same call shapes and threading behaviour that
matter: `poll` blocks until a message arrives or its timeout passes (and says so in
`waiting`), rebalance callbacks run inside `poll`, a partition's pause flag outlives its
assignment, delivery reports are served by `poll` on the producer and carry no headers (as
confluent-kafka's do not), `produce` refuses records over `message.max.bytes` at once, and the transactional calls keep what a transaction wrote
invisible until it commits.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque

from confluent_kafka import KafkaError, KafkaException, TopicPartition


class Msg:
    """A consumed or delivered record, with confluent-kafka's accessor methods."""

    __slots__ = ("_topic", "_partition", "_offset", "_key", "_value", "_headers", "_ts",
                 "_error", "txn")

    def __init__(self, topic, partition, offset, key, value, headers=None, ts=None,
                 error=None, txn=None):
        self._topic, self._partition, self._offset = topic, partition, offset
        self._key, self._value, self._headers = key, value, headers
        self._ts = ts if ts is not None else int(time.time() * 1000)
        self._error, self.txn = error, txn

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key

    def value(self):
        return self._value

    def headers(self):
        return self._headers

    def timestamp(self):
        return (1, self._ts)

    def error(self):
        return self._error


class MemoryBroker:
    def __init__(self):
        self.cond = threading.Condition()
        self.logs: dict[tuple[str, int], list[Msg]] = {}
        self.committed: dict[tuple[str, int], int] = {}
        self.aborted: set[int] = set()       # transaction numbers aborted
        self.open_txns: set[int] = set()
        self.refuse_topics: dict[str, KafkaError] = {}  # topic -> error every delivery gets
        self.max_record_bytes: int | None = None         # the broker's own size limit
        self.consumer_waiting = False  # a consumer is blocked in poll right now
        self.listeners: list[threading.Condition] = []  # told of every change, as cond is

    def changed(self) -> None:
        """Wake whoever waits for this broker's state (call without holding `cond`)."""
        with self.cond:
            self.cond.notify_all()
        for listener in self.listeners:
            with listener:
                listener.notify_all()

    def create(self, topic: str, partitions: int) -> None:
        with self.cond:
            for p in range(partitions):
                self.logs.setdefault((topic, p), [])

    def partitions(self, topic: str) -> list[int]:
        return sorted(p for t, p in self.logs if t == topic)

    def append(self, topic, partition, key, value, headers=None, txn=None) -> Msg:
        with self.cond:
            log = self.logs[(topic, partition)]
            msg = Msg(topic, partition, len(log), key, value, headers, txn=txn)
            log.append(msg)
            self.cond.notify_all()
            return msg

    def visible(self, topic: str) -> list[Msg]:
        """What a read_committed reader of `topic` gets."""
        with self.cond:
            return [m for (t, _), log in sorted(self.logs.items()) if t == topic for m in log
                    if m.txn is None or (m.txn not in self.aborted and m.txn not in
                                         self.open_txns)]


class MemoryConsumer:
    def __init__(self, broker: MemoryBroker, conf: dict):
        self.broker, self.conf = broker, conf
        self.positions: dict[tuple[str, int], int] = {}
        self.paused: set[tuple[str, int]] = set()
        self.events: deque = deque()     # rebalance events to run inside the next poll
        self.callbacks: dict = {}
        self.closed = False
        self.polls = 0

    # -- what the test drives --------------------------------------------------------------

    def rebalance(self, kind: str, tps: list[tuple[str, int]]) -> threading.Event:
        """Schedule an assign / revoke / lost event; the returned event is set once its
        callback has run (inside the consumer's poll)."""
        done = threading.Event()
        with self.broker.cond:
            self.events.append((kind, tps, done))
            self.broker.cond.notify_all()
        return done

    # -- the consumer API -----------------------------------------------------------------

    def subscribe(self, topics, on_assign=None, on_revoke=None, on_lost=None):
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def _serve_events(self) -> None:
        while self.events:
            kind, tps, done = self.events.popleft()
            parts = [TopicPartition(t, p) for t, p in tps]
            if kind == "assign":
                for tp in tps:
                    self.positions[tp] = self.broker.committed.get(tp, 0)
            self.callbacks[kind](self, parts)
            if kind in ("revoke", "lost"):
                for tp in tps:  # librdkafka keeps a partition's pause flag across unassign
                    self.positions.pop(tp, None)  # and assign: so does this stand-in
            done.set()

    def _next(self) -> Msg | None:
        for tp in sorted(self.positions):
            if tp in self.paused:
                continue
            log = self.broker.logs.get(tp, [])
            while self.positions[tp] < len(log):
                msg = log[self.positions[tp]]
                self.positions[tp] += 1
                if msg.txn is not None and (msg.txn in self.broker.aborted):
                    continue
                return msg
        return None

    def poll(self, timeout: float = -1):
        self.polls += 1
        deadline = time.monotonic() + (timeout if timeout >= 0 else 1e9)
        while True:
            if self.events:
                self._serve_events()  # callbacks run without the broker lock, as in librdkafka
            with self.broker.cond:
                msg = self._next()
                pending_events = bool(self.events)
            if msg is not None:
                self.broker.changed()  # tests wait on what was read
                return msg
            if pending_events:
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with self.broker.cond:
                if self.events or self._has_next():
                    continue
                self.broker.consumer_waiting = True
            self.broker.changed()
            with self.broker.cond:
                if not (self.events or self._has_next()):
                    self.broker.cond.wait(left)
                self.broker.consumer_waiting = False

    def _has_next(self) -> bool:
        return any(tp not in self.paused and self.positions[tp] < len(self.broker.logs[tp])
                   for tp in self.positions)

    def consume(self, num_messages: int = 1, timeout: float = -1):
        out = []
        with self.broker.cond:
            while len(out) < num_messages:
                msg = self._next()
                if msg is None:
                    break
                out.append(msg)
        if out:
            self.broker.changed()
        return out

    def assignment(self):
        return [TopicPartition(t, p) for t, p in sorted(self.positions)]

    def incremental_assign(self, partitions):
        for p in partitions:
            self.positions.setdefault((p.topic, p.partition),
                                      self.broker.committed.get((p.topic, p.partition), 0))

    def pause(self, partitions):
        self.paused |= {(p.topic, p.partition) for p in partitions}

    def resume(self, partitions):
        self.paused -= {(p.topic, p.partition) for p in partitions}

    def seek(self, tp):
        self.positions[(tp.topic, tp.partition)] = tp.offset

    def commit(self, offsets=None, asynchronous=True):
        with self.broker.cond:
            for tp in offsets or []:
                self.broker.committed[(tp.topic, tp.partition)] = tp.offset
        self.broker.changed()
        return offsets

    def consumer_group_metadata(self):
        return self

    def close(self):
        if self.callbacks.get("revoke") and self.positions:
            self.callbacks["revoke"](self, self.assignment())
        self.positions.clear()
        self.closed = True


class MemoryProducer:
    def __init__(self, broker: MemoryBroker, conf: dict):
        self.broker, self.conf = broker, conf
        self.max_bytes = int(conf.get("message.max.bytes", 1_000_000))
        self.pending: deque = deque()
        self.cond = threading.Condition()
        self.produced_while_consumer_waiting: list[bool] = []
        self.txn: int | None = None
        self._txn_seq = 0
        self._txn_offsets: dict = {}

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None):
        size = len(value or b"") + len(key or b"") + sum(len(k) + len(v or b"")
                                                         for k, v in headers or [])
        if size > self.max_bytes:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE,
                                            "Message size too large"))
        self.produced_while_consumer_waiting.append(self.broker.consumer_waiting)
        with self.cond:
            self.pending.append((topic, value, key, headers, on_delivery, self.txn))
            self.cond.notify_all()

    def poll(self, timeout: float = 0):
        with self.cond:
            if not self.pending and timeout > 0:
                self.cond.wait(timeout)
            batch, self.pending = list(self.pending), deque()
        for topic, value, key, headers, cb, txn in batch:
            err = self.broker.refuse_topics.get(topic)
            limit = self.broker.max_record_bytes
            if err is None and limit is not None and len(value or b"") + len(key or b"") > limit:
                err = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "broker: message too large")
            parts = self.broker.partitions(topic)
            p, offset = 0, -1
            if err is None:
                p = zlib.crc32(key or b"") % len(parts) if key is not None else 0
                offset = self.broker.append(topic, p, key, value, headers, txn=txn).offset()
            if cb is not None:  # confluent-kafka's delivery reports carry no headers
                cb(err, Msg(topic, p, offset, key, value, None))
        return len(batch)

    def flush(self, timeout: float = 0):
        while self.pending:
            self.poll(0)
        return 0

    # -- transactions ----------------------------------------------------------------------

    def init_transactions(self, timeout=None):
        pass

    def begin_transaction(self):
        self._txn_seq += 1
        self.txn = self._txn_seq
        self.broker.open_txns.add(self.txn)
        self._txn_offsets = {}

    def send_offsets_to_transaction(self, offsets, metadata, timeout=None):
        self._txn_offsets = {(tp.topic, tp.partition): tp.offset for tp in offsets}

    def commit_transaction(self, timeout=None):
        self.flush()
        with self.broker.cond:
            self.broker.open_txns.discard(self.txn)
            self.broker.committed.update(self._txn_offsets)
        self.broker.changed()
        self.txn = None

    def abort_transaction(self, timeout=None):
        self.flush()
        with self.broker.cond:
            self.broker.open_txns.discard(self.txn)
            self.broker.aborted.add(self.txn)
        self.txn = None


def clients(broker: MemoryBroker):
    """The factories a `StreamProcessor` takes, remembering the clients they made."""
    from mgeo.worker.stream.clients import Clients

    made: dict = {}

    def consumer(conf):
        made["consumer"] = MemoryConsumer(broker, conf)
        return made["consumer"]

    def producer(conf):
        made["producer"] = MemoryProducer(broker, conf)
        return made["producer"]

    return Clients(consumer=consumer, producer=producer), made
