"""The answers of a unit, whichever guarantee delivers them.

Every message of a partition we own gets exactly one answer, of one `Kind`. Both delivery
modes (delivery.py, transactions.py) take a unit's answers from here, replace one the broker
refused for good by its bounded substitute here, count them by kind per segment (`Tally`) and
settle them into the stats here once they are final; they differ only in when an answer is
final (confirmed by the broker, or committed in a transaction).

Failures are of two kinds. A transient one (broker away, leader moving, topic not there yet) is
retried. A permanent one (librdkafka says it is not retriable: a record too large, an invalid
record, a keyless record on a compacted topic, no authorization) is never retried: the answer
is replaced by a bounded substitute, a dead-letter stub or an error result of a few kilobytes
whatever the original held (key, headers, value), and if even that cannot be written the worker
stops (exit 1).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from enum import IntEnum
from typing import Iterator, NamedTuple

from confluent_kafka import KafkaError

from mgeo import wire
from mgeo.logs import RateLimitedLog
from mgeo.worker.stream.events import Stats
from mgeo.worker.stream.offsets import OffsetTracker, Segment

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


def is_fatal(err: KafkaError) -> bool:
    """The producer itself is dead (fenced, or another fatal error): no answer, substitute or
    not, can be written by it any more; the worker stops (clients.fatal_line says why)."""
    return err.fatal() or err.code() in (KafkaError._FATAL, KafkaError._FENCED)


def is_permanent(err: KafkaError) -> bool:
    """This answer can never be written (too large, refused by the topic): send its bounded
    substitute. A fatal error is not the answer's fault (is_fatal)."""
    if is_fatal(err):
        return False
    code = err.code()
    if code in _PERMANENT:
        return True
    return code not in _TRANSIENT and not err.retriable()


def unwritable(topic: str, reason: str) -> str:
    """The one line a worker stops with when not even a bounded substitute can be written."""
    return (f"cannot write even a bounded substitute answer to {topic}: {reason}; check the "
            "topic's settings (max.message.bytes, cleanup.policy) and the worker's write "
            "permission")


class Kind(IntEnum):
    RESULT = 0       # a scored pair
    ERROR = 1        # an error result: a request with a usable id that cannot be scored
    DEAD_LETTER = 2  # no usable id: the input itself goes to the dead-letter topic


class Answer(NamedTuple):
    """One answer to produce: the input message's index in its unit, and the record."""
    index: int
    topic: str
    value: bytes | None
    key: bytes | None
    headers: list | None
    kind: Kind
    where: str              # the input message, as topic[partition]@offset
    substitute: bool = False  # already the bounded substitute: nothing smaller is left


class Tally:
    """A segment's answers by kind, counted as they are produced, settled when final."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0, 0, 0]

    def add(self, kind: Kind, n: int = 1) -> None:
        self.counts[kind] += n


class Replacements:
    """Inputs whose answer the broker refused for good, by (partition, offset): exactly-once
    remembers them before it rewinds, and intake marks the input when it comes round again,
    so that its bounded substitute is sent instead. Shared by the two, owned by neither."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reasons: dict[tuple[int, int], str] = {}

    def remember(self, partition: int, offset: int, reason: str) -> None:
        with self._lock:
            self._reasons[(partition, offset)] = reason

    def take(self, partition: int, offset: int) -> str | None:
        with self._lock:
            return self._reasons.pop((partition, offset), None)

    def __bool__(self) -> bool:
        return bool(self._reasons)


class Answers:
    """What both delivery modes share: a unit's answers, their substitutes, their settling."""

    def __init__(self, *, output_topic: str, dlq_topic: str, model_name: str, stats: Stats,
                 tracker: OffsetTracker, ratelog: RateLimitedLog):
        self.output_topic, self.dlq_topic, self.model_name = output_topic, dlq_topic, model_name
        self.stats, self.tracker, self.ratelog = stats, tracker, ratelog

    def of(self, unit, live: set[int]) -> Iterator[Answer]:
        """Every answer of the partitions `live` of a scored unit (see intake.Unit)."""
        msgs, values, failed = unit.msgs, unit.values or [], unit.failed
        everything = len(live) == len(unit.segs)
        replace = unit.replace
        for k, i in enumerate(unit.req_msg):
            m = msgs[i]
            if everything or m.partition() in live:
                key = m.key()
                if key is None:  # results are keyed by request id: compacted topics keep one
                    key = unit.requests[k].id.encode()
                yield self._final(Answer(i, self.output_topic, values[k], key, m.headers(),
                                         Kind.ERROR if k in failed else Kind.RESULT,
                                         _where(m)), replace.get(i))
        for i, (topic, value, headers, key) in unit.answers.items():
            m = msgs[i]
            if everything or m.partition() in live:
                kind = Kind.ERROR if topic == self.output_topic else Kind.DEAD_LETTER
                yield self._final(Answer(i, topic, value, key,
                                         headers if headers is not None else m.headers(),
                                         kind, _where(m)), replace.get(i))

    def kind(self, topic: str, value: bytes | None) -> Kind:
        """The kind of an answer read back from its record (a failed delivery's report)."""
        if topic == self.dlq_topic:
            return Kind.DEAD_LETTER
        try:
            return Kind.ERROR if "error" in wire.decode_result(value or b"") else Kind.RESULT
        except (ValueError, TypeError):
            return Kind.ERROR

    def _final(self, answer: Answer, reason: str | None) -> Answer:
        return answer if reason is None else self.substitute(answer, reason)

    def substitute(self, answer: Answer, reason: str) -> Answer:
        """The answer that replaces one that cannot be written: a dead-letter stub, or a
        result_undeliverable error result. Bounded in every field, whatever the original
        held: its key, id and header values by FIELD_BYTES, a stub's value by STUB_BYTES."""
        topic, value, key, headers, where = (answer.topic, answer.value, answer.key,
                                             answer.headers, answer.where)
        self.stats.substituted += 1
        self.ratelog(f"substitute:{topic}", logging.WARNING, "an answer could not be written "
                     "to %s (%s, permanent): sent a bounded substitute instead", topic, reason)
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
            return Answer(answer.index, topic, data[:STUB_BYTES], _bounded_key(key, where),
                          kept, Kind.DEAD_LETTER, answer.where, True)
        rid = _result_id(value)
        if rid is None or len(rid.encode()) > FIELD_BYTES:
            rid = where
        error = wire.encode_error(rid, RESULT_UNDELIVERABLE,
                                  f"the result could not be written to {topic}: {reason}"[:500],
                                  self.model_name)
        return Answer(answer.index, topic, error, _bounded_key(key, rid),
                      [(SUBSTITUTE, b"true")], Kind.ERROR, answer.where, True)

    def settle(self, seg: Segment, tally: Tally) -> bool:
        """`seg`'s answers are final: count them, unless its partition was given up."""
        if not self.tracker.complete(seg):
            return False
        s = self.stats
        s.answered += seg.count
        s.scored += tally.counts[Kind.RESULT]
        s.error_results += tally.counts[Kind.ERROR]
        s.dead_letters += tally.counts[Kind.DEAD_LETTER]
        return True


_SOURCE = (wire.DLQ_REASON, wire.DLQ_DETAIL, wire.DLQ_TOPIC, wire.DLQ_PARTITION, wire.DLQ_OFFSET)


def _where(m) -> str:
    return f"{m.topic()}[{m.partition()}]@{m.offset()}"


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


def _result_id(value: bytes | None) -> str | None:
    try:
        rid = wire.decode_result(value or b"").get("id")
    except (ValueError, AttributeError):
        return None
    return rid if isinstance(rid, str) else None
