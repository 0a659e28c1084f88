"""Exactly-once: answers and the input offsets they complete, written in one Kafka transaction.

KIP-447: one transactional producer a worker, `send_offsets_to_transaction` with the consumer's
group metadata, so a `read_committed` reader sees each answer once, crashes included. The
inference thread produces whole units into the open transaction, in input order; the Kafka loop
commits it every --commit-interval (also while draining, so a drain never outlives the
transaction timeout), before it gives partitions up, and at shutdown.

A transaction that fails is aborted, and every partition is rewound to its committed offset and
read again. An answer the broker refused for good (too large, invalid) is remembered by its input
offset, so that when that input comes round again its bounded substitute is sent instead: the
same failure cannot abort transactions forever; a substitute refused too stops the worker. A
fatal error (another worker took over the
transactional id: fenced) stops the worker; after it, nothing more is committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from functools import partial
from typing import Callable

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from mgeo.logs import RateLimitedLog
from mgeo.worker.stream.delivery import Answers, answers_of, is_permanent, unwritable
from mgeo.worker.stream.events import Stats
from mgeo.worker.stream.intake import FatalStop, Intake, Unit
from mgeo.worker.stream.offsets import TP, OffsetTracker, Segment

log = logging.getLogger("mgeo.worker")


class _Abort(Exception):
    """The open transaction cannot be committed: abort it and read its inputs again."""


def transactional_call(call: Callable[[float], object], what: str, *, deadline: float,
                       fenced_hint: str, ratelog: RateLimitedLog,
                       stop: threading.Event | None = None, step: float = 10.0) -> None:
    """Run one transactional API call the way librdkafka's error classes ask: retry a
    retriable error until `deadline`, turn an abortable one into `_Abort`, stop on a fatal one
    (`FatalStop`). `call` takes its timeout: at most `step` seconds (a call blocks the loop,
    and signals wait for it), never past `deadline`; a call that times out resumes when
    called again. `stop` set ends the retries."""
    while True:
        try:
            call(max(0.1, min(step, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            err: KafkaError = exc.args[0]
            if err.fatal():
                raise FatalStop(f"exactly-once: the transactional producer failed fatally in "
                                f"{what}: {err.str()}. {fenced_hint}") from None
            if err.txn_requires_abort():
                raise _Abort(f"{what}: {err.str()}") from None
            if err.retriable() and time.monotonic() < deadline and not (stop and stop.is_set()):
                ratelog(f"txn:{what}", logging.WARNING, "exactly-once: %s not done yet (%s); "
                        "retrying", what, err.str())
                continue
            raise _Abort(f"{what}: {err.str()}") from None


class ExactlyOnce:
    def __init__(self, producer, *, tracker: OffsetTracker, stats: Stats, answers: Answers,
                 intake: Intake, on_failure: Callable[[BaseException], None],
                 progress: threading.Condition, ratelog: RateLimitedLog,
                 txn_deadline: Callable[[], float], transactional_id: str,
                 stop: threading.Event | None = None):
        self.producer, self.tracker, self.stats, self.answers = producer, tracker, stats, answers
        self.intake, self.on_failure, self.progress = intake, on_failure, progress
        self.ratelog, self.txn_deadline = ratelog, txn_deadline
        self.transactional_id, self.stop = transactional_id, stop
        self.fenced_hint = (f"If it was fenced, another worker uses the same transactional id "
                            f"({transactional_id}): give each worker its own --transactional-id "
                            "(e.g. the pod name)")
        self.lock = threading.RLock()
        self.failed = False
        self._in_txn = False
        self._segments: list[Segment] = []     # of the open transaction, in input order
        self._error: str | None = None         # the open transaction cannot commit
        self._refused: deque = deque()         # answers the broker refused (callback threads)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="delivery", daemon=True)

    def init(self) -> bool:
        """Initialise the transactional id (fencing any earlier incarnation), then serve;
        False when told to stop first. Calls of a second at most, so that a signal (handled
        between them) is honoured at once."""
        try:
            transactional_call(self.producer.init_transactions, "init_transactions",
                               deadline=self.txn_deadline(), fenced_hint=self.fenced_hint,
                               ratelog=self.ratelog, stop=self.stop, step=1.0)
        except _Abort as exc:
            if self.stop is not None and self.stop.is_set():
                return False
            raise FatalStop(f"exactly-once: cannot initialise the transactional id "
                            f"{self.transactional_id} ({exc}); check that the brokers are "
                            "reachable and support transactions. A restart tries again") from None
        self._thread.start()
        return True

    def _serve(self) -> None:
        try:
            while not self._closed.is_set():
                self.producer.poll(0.2)  # delivery reports; refusals land in _refused
        except KafkaException as exc:  # fatal (fenced...): no transaction can commit now
            self.failed = True
            self.on_failure(FatalStop(f"exactly-once: the transactional producer failed "
                                      f"fatally: {exc.args[0].str()}. {self.fenced_hint}"))
        except Exception as exc:  # noqa: BLE001
            self.failed = True
            self.on_failure(exc)

    # -- the inference thread ----------------------------------------------------------------

    def publish(self, unit: Unit) -> None:
        with self.lock:
            if self.failed or self._error is not None:
                return  # this transaction aborts: the unit is read again after the rewind
            with self.tracker.lock:
                live = {p for p, seg in unit.segs.items() if self.tracker.live(seg)}
                if not live:
                    return
                try:
                    if not self._in_txn:
                        self.producer.begin_transaction()
                        self._in_txn = True
                    for i, topic, value, key, headers, kind in answers_of(
                            unit, live, self.answers.output_topic):
                        seg = unit.segs[unit.msgs[i].partition()]
                        reason = unit.replace.get(i)
                        if reason is not None:
                            topic, value, key, headers, kind = self._substitute(
                                unit, i, topic, value, key, headers, reason)
                        self._produce(unit, i, seg, topic, value, key, headers, kind)
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.fatal():
                        raise FatalStop(f"exactly-once: producing failed fatally: {err.str()}. "
                                        f"{self.fenced_hint}") from None
                    self._error = f"producing failed: {err.str()}"
                    return
                for p in live:
                    unit.segs[p].published = True
                    self._segments.append(unit.segs[p])

    def _produce(self, unit: Unit, i: int, seg: Segment, topic, value, key, headers,
                 kind: int) -> None:
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers,
                                      on_delivery=partial(self._delivered, unit, i))
                break
            except BufferError:  # the local queue is full: the delivery thread drains it
                self.producer.flush(0.5)
            except KafkaException as exc:
                if not is_permanent(exc.args[0]):
                    raise
                if i in unit.replace:  # the substitute itself: nothing smaller is left
                    raise FatalStop(f"exactly-once: {unwritable(topic, exc.args[0].str())}") \
                        from None
                # Refused before it reached the transaction (e.g. over message.max.bytes):
                # send the substitute instead; the transaction is unharmed.
                unit.replace[i] = exc.args[0].str()
                topic, value, key, headers, kind = self._substitute(
                    unit, i, topic, value, key, headers, exc.args[0].str())
        if kind == 0:
            seg.results += 1
        elif kind == 1:
            seg.errors += 1
        else:
            seg.dead += 1

    def _substitute(self, unit: Unit, i: int, topic, value, key, headers, reason: str):
        m = unit.msgs[i]
        sub = self.answers.substitute(topic, value, key, headers, reason,
                                      f"{m.topic()}[{m.partition()}]@{m.offset()}")
        self.stats.substituted += 1
        self.ratelog(f"substitute:{topic}", logging.WARNING, "an answer could not be written "
                     "to %s (%s, permanent): sent a bounded substitute instead", topic, reason)
        return (*sub, self.answers.kind(sub[0], sub[1]))

    def _delivered(self, unit: Unit, i: int, err: KafkaError | None, msg) -> None:
        if err is not None:  # (which answer: by unit and index; reports carry no headers)
            self._refused.append((unit, i, err))

    # -- the Kafka loop ----------------------------------------------------------------------

    def commit(self, consumer, tps: set[TP] | None = None) -> None:
        """Commit the open transaction (every partition's share: a transaction is whole)."""
        with self.lock:
            if self.failed:
                return
            try:
                if self._refused or self._error is not None:
                    raise _Abort(self._error or "an answer was refused")
                if not self._in_txn:
                    return
                if not all(self.tracker.live(s) for s in self._segments):
                    raise _Abort("it holds answers of partitions no longer ours")
                positions = {s.tp: s.end for s in self._segments}
                offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
                deadline = self.txn_deadline()
                transactional_call(lambda timeout: self.producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), timeout), "send_offsets",
                    deadline=deadline, fenced_hint=self.fenced_hint, ratelog=self.ratelog)
                transactional_call(self.producer.commit_transaction,
                                   "commit_transaction", deadline=deadline,
                                   fenced_hint=self.fenced_hint, ratelog=self.ratelog)
            except _Abort as why:
                self._abort(consumer, str(why))
                return
            except FatalStop:
                self.failed = True
                raise
            self._settle(positions)

    def _settle(self, positions: dict[TP, int]) -> None:
        s = self.stats
        for seg in self._segments:
            if self.tracker.complete(seg):
                s.answered += seg.count
                s.scored += seg.results
                s.error_results += seg.errors
                s.dead_letters += seg.dead
        self.tracker.committed(positions)
        s.commits += 1
        self._segments = []
        self._in_txn = False
        with self.progress:
            self.progress.notify_all()

    def _abort(self, consumer, reason: str) -> None:
        """Abort the open transaction and read again every input it answered."""
        self.ratelog("abort", logging.WARNING, "exactly-once: aborting the transaction (%s); "
                     "rewinding to the committed offsets", reason)
        unwritten = self._remember_refusals()
        if self._in_txn:
            try:
                transactional_call(self.producer.abort_transaction,
                                   "abort_transaction", deadline=self.txn_deadline(),
                                   fenced_hint=self.fenced_hint, ratelog=self.ratelog)
            except _Abort as exc:
                self.failed = True
                raise FatalStop(f"exactly-once: cannot abort the transaction ({exc}); "
                                f"stopping (nothing of it was committed). "
                                f"{self.fenced_hint}") from None
            except FatalStop:
                self.failed = True
                raise
        self._in_txn = False
        self._error = None
        self._segments = []
        self.stats.aborts += 1
        if unwritten is not None:
            self.failed = True
            raise FatalStop(f"exactly-once: {unwritten}")
        for tp in self.tracker.partitions():
            target = self.tracker.rewind(tp)
            if target is None:
                continue
            try:
                consumer.seek(TopicPartition(tp[0], tp[1], target))
            except KafkaException as exc:
                # Reading on past the aborted answers would lose them: stop instead; a restart
                # reads from the committed offsets.
                self.failed = True
                raise FatalStop(f"exactly-once: cannot rewind {tp[0]}[{tp[1]}] to {target} "
                                f"after an abort: {exc.args[0].str()}") from None
        with self.progress:
            self.progress.notify_all()

    def _remember_refusals(self) -> str | None:
        """Answers refused for good are replaced by their substitutes when read again; a
        refused substitute is the end (the line to stop with, else None)."""
        unwritten = None
        while self._refused:
            unit, i, err = self._refused.popleft()
            if not is_permanent(err):
                continue
            if i in unit.replace:
                topic = unit.answers[i][0] if i in unit.answers else self.answers.output_topic
                unwritten = unwritten or unwritable(topic, err.str())
                continue
            m = unit.msgs[i]
            self.intake.replace[(m.partition(), m.offset())] = err.str()
        return unwritten

    def lost(self, consumer, tps: set[TP]) -> None:
        """The open transaction answers inputs of lost partitions, whose offsets it can no
        longer commit: abort it all, and read the kept partitions' share again."""
        with self.lock:
            if self.failed or not (self._in_txn or self._error or self._refused):
                return
            self._abort(consumer, "partitions lost")

    def settled(self, tps: set[TP] | None = None) -> bool:
        with self.lock:
            return not self._in_txn or self.failed

    def close(self, timeout: float) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
