"""Exactly-once: answers and the input offsets they complete, written in one Kafka transaction.

KIP-447: one transactional producer a worker, `send_offsets_to_transaction` with the consumer's
group metadata, so a `read_committed` reader sees each answer once, crashes included. The
inference thread produces whole units into the open transaction, in input order; the Kafka loop
commits it every --commit-interval (also while draining, so a drain never outlives the
transaction timeout), before it gives partitions up, and at shutdown.

A transaction that fails is aborted, and every partition is rewound to its committed offset and
read again. An answer the broker refused for good (too large, invalid) is remembered by its input
offset (answers.Replacements), so that when that input comes round again its bounded substitute
is sent instead: the same failure cannot abort transactions forever; a substitute refused too
stops the worker. A fatal error (another worker took over the transactional id: fenced) stops
the worker; after it, nothing more is committed.
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
from mgeo.worker.stream.answers import (Answer, Answers, Replacements, Tally, is_fatal,
                                       is_permanent, unwritable)
from mgeo.worker.stream.delivery import Serving
from mgeo.worker.stream.intake import FatalStop, Unit
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
    """The delivery step of exactly-once: answers go into the open transaction at once; the
    Kafka loop commits it with the offsets it completes."""

    def __init__(self, producer, *, tracker: OffsetTracker, answers: Answers,
                 replacements: Replacements, on_failure: Callable[[BaseException], None],
                 moved: Callable[[], None], txn_deadline: Callable[[], float],
                 transactional_id: str, stop: threading.Event | None = None):
        self.producer, self.tracker, self.answers = producer, tracker, answers
        self.stats, self.ratelog = answers.stats, answers.ratelog
        self.replacements, self.on_failure, self.moved = replacements, on_failure, moved
        self.txn_deadline, self.transactional_id, self.stop = txn_deadline, transactional_id, stop
        self.fenced_hint = (f"If it was fenced, another worker uses the same transactional id "
                            f"({transactional_id}): give each worker its own --transactional-id "
                            "(e.g. the pod name)")
        self.lock = threading.RLock()
        self.failed = False
        self._in_txn = False                    # a transaction is open
        self._open: dict[Segment, Tally] = {}   # of the open transaction, in input order
        self._error: str | None = None          # the open transaction cannot commit
        self._refused: deque = deque()          # answers the broker refused (serving thread)
        self._serving = Serving(producer, self._serving_failed)

    def start(self) -> bool:
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
        self._serving.start()
        log.info("exactly-once: transactional id %s ready", self.transactional_id)
        return True

    def _serving_failed(self, exc: BaseException) -> None:
        self.failed = True  # no transaction can commit now
        if isinstance(exc, KafkaException):  # fatal (fenced...)
            exc = self._fatal(exc.args[0])
        self.on_failure(exc)

    def _fatal(self, err: KafkaError) -> FatalStop:
        """The stop of a producer that failed fatally (fenced...), with the hint."""
        self.failed = True  # no transaction can commit now
        return FatalStop(f"exactly-once: the transactional producer failed fatally: "
                         f"{err.str()}. {self.fenced_hint}")

    # -- the inference thread ----------------------------------------------------------------

    def submit(self, unit: Unit) -> None:
        with self.lock:
            if self.failed or self._error is not None:
                return  # this transaction aborts: the unit is read again after the rewind
            with self.tracker.lock:
                live = {p: seg for p, seg in unit.segs.items() if self.tracker.live(seg)}
                if not live:
                    return
                tallies = {p: Tally() for p in live}
                try:
                    if not self._in_txn:
                        self.producer.begin_transaction()
                        self._in_txn = True
                    for a in self.answers.of(unit, set(live)):
                        m = unit.msgs[a.index]
                        tallies[m.partition()].add(self._produce(m, a))
                except KafkaException as exc:
                    err = exc.args[0]
                    if err.fatal():
                        raise FatalStop(f"exactly-once: producing failed fatally: {err.str()}. "
                                        f"{self.fenced_hint}") from None
                    self._error = f"producing failed: {err.str()}"
                    return
                for p, seg in live.items():
                    self._open[seg] = tallies[p]

    def poll(self) -> None:
        """(The serving thread serves delivery reports.)"""

    def _produce(self, m, a: Answer):
        """Produce `a` (its substitute when the broker refuses it at once); its kind."""
        while True:
            try:
                self.producer.produce(a.topic, value=a.value, key=a.key, headers=a.headers,
                                      on_delivery=partial(self._delivered, m, a))
                return a.kind
            except BufferError:  # the local queue is full: the serving thread drains it
                self.producer.flush(0.5)
            except KafkaException as exc:
                if is_fatal(exc.args[0]):  # fenced...: the producer is dead, say so
                    raise self._fatal(exc.args[0]) from None
                if not is_permanent(exc.args[0]):
                    raise
                if a.substitute:  # nothing smaller is left
                    raise FatalStop(f"exactly-once: {unwritable(a.topic, exc.args[0].str())}") \
                        from None
                # Refused before it reached the transaction (e.g. over message.max.bytes):
                # send the substitute instead; the transaction is unharmed.
                a = self.answers.substitute(a, exc.args[0].str())

    def _delivered(self, m, a: Answer, err: KafkaError | None, msg) -> None:
        if err is not None:  # (which answer: kept here; reports carry no headers)
            self._refused.append((m, a, err))

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
                if not all(self.tracker.live(s) for s in self._open):
                    raise _Abort("it holds answers of partitions no longer ours")
                positions = {s.tp: s.end for s in self._open}
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
            for seg, tally in self._open.items():
                self.answers.settle(seg, tally)
            self.tracker.committed(positions)
            self.stats.commits += 1
            self._open = {}
            self._in_txn = False
        self.moved()

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
        self._open = {}
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
        self.moved()

    def _remember_refusals(self) -> str | None:
        """Answers refused for good are replaced by their substitutes when read again; a
        refused substitute is the end (the line to stop with, else None)."""
        unwritten = None
        while self._refused:
            m, a, err = self._refused.popleft()
            if not is_permanent(err):
                continue
            if a.substitute:
                unwritten = unwritten or unwritable(a.topic, err.str())
                continue
            self.replacements.remember(m.partition(), m.offset(), err.str())
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

    def close(self) -> None:
        self._serving.close()

    def join(self, timeout: float) -> bool:
        return self._serving.join(timeout)
