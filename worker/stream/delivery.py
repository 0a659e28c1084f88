"""Delivering answers: what both guarantees share, and at-least-once.

A strategy (`AtLeastOnce` here, `ExactlyOnce` in transactions.py) receives each scored unit from
the inference thread and produces its answers at once. Before it produces anything it checks,
under the tracker's lock, that the unit's partitions are still ours; the Kafka loop takes the
same lock to give a partition up, so no answer of a partition already handed over is sent.

Failures are of two kinds. A transient one (broker away, leader moving, topic not there yet) is
retried after a pause, and nothing is committed past it. A permanent one (librdkafka says it is
not retriable: a record too large, an invalid record, a keyless record on a compacted topic, no
authorization) is never retried: the answer is replaced by a bounded substitute, a dead-letter
stub or an error result of a few kilobytes whatever the original held (key, headers, value), and
if even that cannot be written the worker stops (exit 1). Which records are substitutes the
worker remembers itself, per record produced: delivery reports carry no headers.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from functools import partial
from typing import Callable, Protocol

from confluent_kafka import KafkaError, KafkaException

from mgeo import wire
from mgeo.logs import RateLimitedLog
from mgeo.worker.stream.events import Stats
from mgeo.worker.stream.intake import FatalStop, Unit
from mgeo.worker.stream.offsets import TP, OffsetTracker, Segment

log = logging.getLogger("mgeo.worker")

RETRY_BACKOFF = 1.0  # seconds before transiently failed answers are sent again
STUB_BYTES = 1024    # how much of an unwritable dead letter its stub keeps
FIELD_BYTES = 1024   # the most a substitute's key, id or any header value may hold

# Headers of a substitute answer.
STUB = "mgeo.dlq.stub"
STUB_REASON = "mgeo.dlq.stub.reason"
STUB_SIZE = "mgeo.dlq.original.bytes"
STUB_SHA256 = "mgeo.dlq.original.sha256"
SUBSTITUTE = "mgeo.substitute"
RESULT_UNDELIVERABLE = "result_undeliverable"

# Errors librdkafka may mark non-retriable that still pass with time (a topic being created, a
# broker coming back, a message that waited too long in the queue).
_TRANSIENT = {KafkaError._MSG_TIMED_OUT, KafkaError._UNKNOWN_TOPIC,
              KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._TRANSPORT,
              KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT,
              KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
              KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
              KafkaError._QUEUE_FULL, KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT}
# Errors that no retry can mend, whatever the flag says.
_PERMANENT = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD,
              KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_MSG,
              KafkaError.INVALID_MSG_SIZE, KafkaError.TOPIC_AUTHORIZATION_FAILED,
              KafkaError.INVALID_REQUIRED_ACKS}


def is_permanent(err: KafkaError) -> bool:
    code = err.code()
    if code in _PERMANENT:
        return True
    return code not in _TRANSIENT and not err.retriable()


class Delivery(Protocol):
    """A delivery guarantee, as the Kafka loop and the inference stage use it."""

    def publish(self, unit: Unit) -> None:
        """(inference thread) Produce the answers of `unit`'s partitions that are still ours."""

    def commit(self, consumer, tps: set[TP] | None = None) -> None:
        """(Kafka loop) Commit what is final: offsets, or the open transaction."""

    def lost(self, consumer, tps: set[TP]) -> None:
        """(Kafka loop) These partitions were taken from us; commit nothing of them."""

    def settled(self, tps: set[TP] | None = None) -> bool:
        """Whether every answer produced (of these partitions) is final."""

    def close(self, timeout: float) -> None:
        """Stop, after at most `timeout` seconds of waiting for what was produced."""


class Answers:
    """One message's answer and its substitute, shared by both strategies."""

    def __init__(self, *, output_topic: str, dlq_topic: str, model_name: str):
        self.output_topic, self.dlq_topic, self.model_name = output_topic, dlq_topic, model_name

    def substitute(self, topic: str, value: bytes | None, key: bytes | None,
                   headers: list | None, reason: str, where: str
                   ) -> tuple[str, bytes, bytes, list]:
        """The answer that replaces one that cannot be written: a dead-letter stub, or a
        result_undeliverable error result. Bounded in every field, whatever the original
        held: its key, id and header values by FIELD_BYTES, a stub's value by STUB_BYTES.
        `where` names the input message."""
        # A dead letter's own headers (the last of each name: the input's may repeat them)
        # say why and exactly where it came from.
        ours = {k: v for k, v in headers or [] if k in _SOURCE and v is not None}
        if all(k in ours for k in (wire.DLQ_TOPIC, wire.DLQ_PARTITION, wire.DLQ_OFFSET)):
            where = (f"{_text(ours[wire.DLQ_TOPIC])}[{_text(ours[wire.DLQ_PARTITION])}]"
                     f"@{_text(ours[wire.DLQ_OFFSET])}")
        if topic == self.dlq_topic:
            data = value or b""
            kept = [(k, v[:FIELD_BYTES]) for k, v in ours.items()]
            kept += [(STUB, b"true"), (STUB_REASON, reason.encode("utf-8", "replace")[:500]),
                     (STUB_SIZE, str(len(data)).encode()),
                     (STUB_SHA256, hashlib.sha256(data).hexdigest().encode())]
            return topic, data[:STUB_BYTES], _bounded_key(key, where), kept
        rid = _result_id(value)
        if rid is None or len(rid.encode()) > FIELD_BYTES:
            rid = where
        error = wire.encode_error(rid, RESULT_UNDELIVERABLE,
                                  f"the result could not be written to {topic}: {reason}"[:500],
                                  self.model_name)
        return topic, error, _bounded_key(key, rid), [(SUBSTITUTE, b"true")]

    def kind(self, topic: str, value: bytes | None) -> int:
        """0 a result, 1 an error result, 2 a dead letter (read back from a failed answer)."""
        if topic == self.dlq_topic:
            return 2
        try:
            return 1 if "error" in wire.decode_result(value or b"") else 0
        except (ValueError, TypeError):
            return 1


_SOURCE = (wire.DLQ_REASON, wire.DLQ_DETAIL, wire.DLQ_TOPIC, wire.DLQ_PARTITION, wire.DLQ_OFFSET)


def _text(raw: bytes) -> str:
    return raw[:FIELD_BYTES].decode("utf-8", "replace")


def _bounded_key(key: bytes | None, fallback: str) -> bytes:
    """A substitute's key: the original when it is small, else its SHA-256 (stable, so a
    compacted topic still keeps one answer per key); `fallback` when there was none."""
    if key is None:
        return fallback.encode()[:FIELD_BYTES]
    if len(key) <= FIELD_BYTES:
        return key
    return b"sha256:" + hashlib.sha256(key).hexdigest().encode()


class Sent:
    """What the worker keeps of a record it produced, because its delivery report will not
    give it back: the headers (reports carry none), the input it answers, and whether it is
    already a substitute (nothing smaller is left to send)."""

    __slots__ = ("headers", "where", "substitute")

    def __init__(self, headers: list | None, where: str, substitute: bool = False):
        self.headers, self.where, self.substitute = headers, where, substitute


def _result_id(value: bytes | None) -> str | None:
    try:
        rid = wire.decode_result(value or b"").get("id")
    except (ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) else None


def answers_of(unit: Unit, live: set[int], output_topic: str):
    """(msg index, topic, value, key, headers, kind) of every answer of the partitions `live`,
    kind 0 a result, 1 an error result, 2 a dead letter."""
    msgs, values = unit.msgs, unit.values or []
    everything = len(live) == len(unit.segs)
    for k, i in enumerate(unit.req_msg):
        m = msgs[i]
        if everything or m.partition() in live:
            value = values[k]
            key = m.key()
            if key is None:  # results are keyed by request id: compacted topics keep one
                key = unit.requests[k].id.encode()
            yield i, output_topic, value, key, m.headers(), 1 if k in unit.failed else 0
    for i, (topic, value, headers, key) in unit.answers.items():
        m = msgs[i]
        if everything or m.partition() in live:
            yield i, topic, value, key, headers if headers is not None else m.headers(), \
                1 if topic == output_topic else 2


class AtLeastOnce:
    """Answers go out at once; offsets are committed once the broker confirmed every answer
    of them. A crash or a lost partition can therefore cause duplicates, never a loss."""

    def __init__(self, producer, *, tracker: OffsetTracker, stats: Stats, answers: Answers,
                 on_failure: Callable[[BaseException], None], progress: threading.Condition,
                 ratelog: RateLimitedLog):
        self.producer, self.tracker, self.stats, self.answers = producer, tracker, stats, answers
        self.on_failure, self.progress, self.ratelog = on_failure, progress, ratelog
        self._retry: list[tuple[Segment, str, bytes | None, bytes | None, Sent | None]] = []
        self._retry_at = 0.0
        # Waiting for room in the producer's queue releases the tracker's lock, however deep.
        self._room = threading.Condition(tracker.lock)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="delivery", daemon=True)
        self._thread.start()

    # -- the inference thread ----------------------------------------------------------------

    def publish(self, unit: Unit) -> None:
        with self.tracker.lock:
            live = {p for p, seg in unit.segs.items() if self.tracker.live(seg)}
            for p in live:
                unit.segs[p].published = True
            # A record without headers needs nothing kept for its delivery report: one
            # callback a partition serves them all.
            callbacks = {p: partial(self._delivered, unit.segs[p], None) for p in live}
            for i, topic, value, key, headers, kind in answers_of(
                    unit, live, self.answers.output_topic):
                p = unit.msgs[i].partition()
                seg = unit.segs[p]
                reason = unit.replace.get(i)
                if reason is not None:
                    topic, value, key, headers = self.answers.substitute(
                        topic, value, key, headers, reason, _where(unit, i))
                    kind = 1 if topic == self.answers.output_topic else 2
                    self.stats.substituted += 1
                    sent = Sent(headers, _where(unit, i), substitute=True)
                else:
                    sent = Sent(headers, _where(unit, i)) if headers else None
                self._count(seg, kind, +1)
                seg.pending += 1
                callback = callbacks[p] if sent is None else partial(self._delivered, seg, sent)
                self._produce(seg, topic, value, key, headers, callback, sent)

    def _count(self, seg: Segment, kind: int, n: int) -> None:
        if kind == 0:
            seg.results += n
        elif kind == 1:
            seg.errors += n
        else:
            seg.dead += n

    def _produce(self, seg: Segment, topic: str, value, key, headers, callback,
                 sent: Sent | None) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=callback)
                return
            except BufferError:  # the local queue is full until the broker catches up
                with self._room:
                    self._room.wait(0.5)
                if not self.tracker.live(seg):
                    seg.pending -= 1
                    return
            except KafkaException as exc:  # refused at once, e.g. larger than message.max.bytes
                self._failed(seg, exc.args[0], topic, value, key, sent)
                return

    # -- the delivery thread -----------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._closed.is_set():
                if self.producer.poll(0.2):  # returns as soon as delivery reports were served
                    with self._room:
                        self._room.notify_all()
                if self._retry and time.monotonic() >= self._retry_at:
                    self._resend()
        except Exception as exc:  # noqa: BLE001 - e.g. the producer failed fatally: stop
            self.on_failure(exc)

    def _delivered(self, seg: Segment, sent: Sent | None, err: KafkaError | None, msg) -> None:
        if err is not None:
            self._failed(seg, err, msg.topic(), msg.value(), msg.key(), sent)
            return
        seg.pending -= 1
        if seg.pending == 0:
            self._settle(seg)

    def _settle(self, seg: Segment) -> None:
        if self.tracker.complete(seg):
            s = self.stats
            s.answered += seg.count
            s.scored += seg.results
            s.error_results += seg.errors
            s.dead_letters += seg.dead
        with self.progress:
            self.progress.notify_all()

    def _failed(self, seg: Segment, err: KafkaError, topic: str, value, key,
                sent: Sent | None) -> None:
        if is_permanent(err):
            if sent is not None and sent.substitute:  # nothing smaller is left to send
                self.on_failure(FatalStop(unwritable(topic, err.str())))
                return
            where = sent.where if sent is not None else f"{seg.tp[0]}[{seg.tp[1]}]"
            sub = self.answers.substitute(topic, value, key, sent.headers if sent else None, err.str(),
                                          where)
            self.stats.substituted += 1
            self.ratelog(f"substitute:{topic}", logging.WARNING,
                         "an answer could not be written to %s (%s, permanent): sent a bounded "
                         "substitute instead", topic, err.str())
            self._count(seg, self.answers.kind(topic, value), -1)
            self._count(seg, 2 if sub[0] == self.answers.dlq_topic else 1, +1)
            again = Sent(sub[3], where, substitute=True)
            with self.tracker.lock:
                if self.tracker.live(seg):
                    self._produce(seg, *sub, partial(self._delivered, seg, again), again)
            return
        self.stats.delivery_retries += 1
        self.ratelog(f"deliver:{topic}", logging.WARNING,
                     "could not deliver to %s: %s; retrying, and committing nothing past it",
                     topic, err.str())
        self._retry.append((seg, topic, value, key, sent))
        self._retry_at = time.monotonic() + RETRY_BACKOFF

    def _resend(self) -> None:
        with self.tracker.lock:  # (the inference thread appends to the list under it)
            retry, self._retry = self._retry, []
            for seg, topic, value, key, sent in retry:
                if self.tracker.live(seg):
                    self._produce(seg, topic, value, key, sent.headers if sent else None,
                                  partial(self._delivered, seg, sent), sent)

    # -- the Kafka loop ----------------------------------------------------------------------

    def commit(self, consumer, tps: set[TP] | None = None) -> None:
        positions = self.tracker.to_commit(tps)
        if not positions:
            return
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
        try:
            result = consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self.ratelog("commit", logging.WARNING, "commit failed: %s (will retry)",
                         exc.args[0].str())
            return
        ok = {(tp.topic, tp.partition) for tp in result or offsets if tp.error is None}
        for tp in result or []:
            if tp.error is not None:
                self.ratelog("commit", logging.WARNING, "commit of %s[%d] failed: %s (will "
                             "retry)", tp.topic, tp.partition, tp.error.str())
        self.tracker.committed({tp: pos for tp, pos in positions.items() if tp in ok})
        self.stats.commits += 1

    def lost(self, consumer, tps: set[TP]) -> None:
        """Nothing to undo: their answers went out, their offsets stay uncommitted."""

    def settled(self, tps: set[TP] | None = None) -> bool:
        if tps is None:
            tps = set(self.tracker.partitions())
        return self.tracker.unconfirmed(tps) == 0

    def close(self, timeout: float) -> None:
        self._closed.set()
        self._thread.join(timeout)
        self.producer.flush(max(0.0, timeout))


def unwritable(topic: str, reason: str) -> str:
    """The one line a worker stops with when not even a bounded substitute can be written."""
    return (f"cannot write even a bounded substitute answer to {topic}: {reason}; check the "
            "topic's settings (max.message.bytes, cleanup.policy) and the worker's write "
            "permission")


def _where(unit: Unit, i: int) -> str:
    m = unit.msgs[i]
    return f"{m.topic()}[{m.partition()}]@{m.offset()}"
