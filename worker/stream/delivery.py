"""Delivering answers: the step both guarantees share, and at-least-once.

A delivery step (`AtLeastOnce` here, `ExactlyOnce` in transactions.py) is the last of the
worker's steps (steps.py): it is submitted each scored unit by the inference step and produces
its answers at once (their content, substitutes and settling: answers.py). Before it produces
anything it checks, under the tracker's lock, that the unit's partitions are still ours; the
Kafka loop takes the same lock to give a partition up, so no answer of a partition already
handed over is sent. The Kafka loop asks it what is final (`settled`) and has it commit.

A transient delivery failure is retried after a pause, and nothing is committed past it; a
permanent one sends the answer's bounded substitute instead (answers.py). Which records are
substitutes the worker remembers itself, per record produced: delivery reports carry no
headers.
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Callable, Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from mgeo.worker.stream.answers import Answer, Answers, Kind, Tally, is_permanent, unwritable
from mgeo.worker.stream.intake import FatalStop, Unit
from mgeo.worker.stream.offsets import TP, OffsetTracker, Segment

log = logging.getLogger("mgeo.worker")

RETRY_BACKOFF = 1.0  # seconds before transiently failed answers are sent again


class Delivery(Protocol):
    """A delivery guarantee, as the Kafka loop and the inference step use it. Its lifecycle:
    `start`, then `submit` (inference threads) and `commit`/`lost`/`settled` (Kafka loop),
    then `close` and `join`."""

    def start(self) -> bool:
        """Get the producer ready and start serving it; False when told to stop first."""

    def submit(self, unit: Unit) -> None:
        """(inference thread) Produce the answers of `unit`'s partitions that are still ours."""

    def poll(self) -> None:
        """(Kafka loop) Nothing to do on the loop's thread: the serving thread does it."""

    def commit(self, consumer, tps: set[TP] | None = None) -> None:
        """(Kafka loop) Commit what is final: offsets, or the open transaction."""

    def lost(self, consumer, tps: set[TP]) -> None:
        """(Kafka loop) These partitions were taken from us; commit nothing of them."""

    def settled(self, tps: set[TP] | None = None) -> bool:
        """Whether every answer produced (of these partitions) is final."""

    def close(self) -> None:
        """Nothing more will be submitted: stop serving the producer."""

    def join(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the serving thread and what was produced."""


class Serving:
    """The thread that serves the producer (its delivery reports), in both modes: `served`
    runs after reports were served, `tick` on every turn; an exception stops it and goes to
    `on_failure`."""

    def __init__(self, producer, on_failure: Callable[[BaseException], None], *,
                 served: Callable[[], None] | None = None,
                 tick: Callable[[], None] | None = None):
        self.producer, self.on_failure, self.served, self.tick = producer, on_failure, served, tick
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="delivery", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.closed.set()

    def join(self, timeout: float) -> bool:
        if self.thread.is_alive():
            self.thread.join(timeout)
        return not self.thread.is_alive()

    def _serve(self) -> None:
        try:
            while not self.closed.is_set():
                # returns as soon as delivery reports were served
                if self.producer.poll(0.2) and self.served is not None:
                    self.served()
                if self.tick is not None:
                    self.tick()
        except Exception as exc:  # noqa: BLE001 - e.g. the producer failed fatally: stop
            self.on_failure(exc)


class AtLeastOnce:
    """Answers go out at once; offsets are committed once the broker confirmed every answer
    of them. A crash or a lost partition can therefore cause duplicates, never a loss."""

    def __init__(self, producer, *, tracker: OffsetTracker, answers: Answers,
                 on_failure: Callable[[BaseException], None], moved: Callable[[], None]):
        self.producer, self.tracker, self.answers = producer, tracker, answers
        self.stats, self.ratelog = answers.stats, answers.ratelog
        self.on_failure, self.moved = on_failure, moved
        self._retry: list[tuple[Segment, Answer | None, str, bytes | None, bytes | None]] = []
        self._retry_at = 0.0
        self._tallies: dict[Segment, Tally] = {}   # under the tracker's lock
        # Waiting for room in the producer's queue releases the tracker's lock, however deep.
        self._room = threading.Condition(tracker.lock)
        self._serving = Serving(producer, on_failure, served=self._served, tick=self._tick)

    def start(self) -> bool:
        self._serving.start()
        return True

    # -- the inference thread ----------------------------------------------------------------

    def submit(self, unit: Unit) -> None:
        with self.tracker.lock:
            live = {p: seg for p, seg in unit.segs.items() if self.tracker.live(seg)}
            for seg in live.values():  # one answer a message, each confirmed in its turn
                self.tracker.sent(seg, seg.count)
            # A record without headers needs nothing kept for its delivery report: one
            # callback a partition serves them all.
            callbacks = {p: partial(self._delivered, seg, None) for p, seg in live.items()}
            tallies = {p: self._tallies.setdefault(seg, Tally()) for p, seg in live.items()}
            for a in self.answers.of(unit, set(live)):
                p = unit.msgs[a.index].partition()
                seg = live[p]
                tallies[p].add(a.kind)
                kept = a if a.headers or a.substitute else None
                callback = callbacks[p] if kept is None else partial(self._delivered, seg, a)
                self._produce(seg, a, callback)

    def poll(self) -> None:
        """(The serving thread serves delivery reports and retries.)"""

    def _produce(self, seg: Segment, a: Answer, callback) -> None:
        while True:
            try:
                self.producer.produce(a.topic, value=a.value, key=a.key, headers=a.headers,
                                      on_delivery=callback)
                return
            except BufferError:  # the local queue is full until the broker catches up
                with self._room:
                    self._room.wait(0.5)
                if not self.tracker.live(seg):
                    self.tracker.confirmed(seg)
                    return
            except KafkaException as exc:  # refused at once, e.g. larger than message.max.bytes
                self._failed(seg, a, exc.args[0], a.topic, a.value, a.key)
                return

    # -- the serving thread ------------------------------------------------------------------

    def _served(self) -> None:
        with self._room:
            self._room.notify_all()

    def _tick(self) -> None:
        if self._retry and time.monotonic() >= self._retry_at:
            self._resend()

    def _delivered(self, seg: Segment, a: Answer | None, err: KafkaError | None, msg) -> None:
        if err is not None:
            self._failed(seg, a, err, msg.topic(), msg.value(), msg.key())
            return
        self._confirmed(seg)

    def _confirmed(self, seg: Segment) -> None:
        left = self.tracker.confirmed(seg)
        if left:
            return
        with self.tracker.lock:
            tally = self._tallies.pop(seg, None)
        if left == 0 and tally is not None:
            self.answers.settle(seg, tally)
            self.moved()

    def _failed(self, seg: Segment, a: Answer | None, err: KafkaError, topic: str, value,
                key) -> None:
        if a is None:  # one that kept nothing: what it was, read back from the report
            where = f"{seg.tp[0]}[{seg.tp[1]}]"
            a = Answer(-1, topic, value, key, None, self.answers.kind(topic, value), where)
        if is_permanent(err):
            if a.substitute:  # nothing smaller is left to send
                self.on_failure(FatalStop(unwritable(topic, err.str())))
                return
            sub = self.answers.substitute(a._replace(topic=topic, value=value, key=key),
                                          err.str())
            with self.tracker.lock:
                tally = self._tallies.get(seg)
                if tally is not None:
                    tally.add(a.kind, -1)
                    tally.add(sub.kind)
                if self.tracker.live(seg):
                    self._produce(seg, sub, partial(self._delivered, seg, sub))
            return
        self.stats.delivery_retries += 1
        self.ratelog(f"deliver:{topic}", logging.WARNING,
                     "could not deliver to %s: %s; retrying, and committing nothing past it",
                     topic, err.str())
        with self.tracker.lock:  # (the inference thread appends to the list under it)
            self._retry.append((seg, a, topic, value, key))
        self._retry_at = time.monotonic() + RETRY_BACKOFF

    def _resend(self) -> None:
        with self.tracker.lock:
            retry, self._retry = self._retry, []
            for seg, a, topic, value, key in retry:
                if self.tracker.live(seg):
                    again = a._replace(topic=topic, value=value, key=key)
                    self._produce(seg, again, partial(self._delivered, seg, again))

    # -- the Kafka loop ----------------------------------------------------------------------

    def commit(self, consumer, tps: set[TP] | None = None) -> None:
        positions = self.tracker.to_commit(tps)
        if not positions:
            return
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
        with self.tracker.lock:
            for seg in [s for s in self._tallies if s.tp in tps]:
                del self._tallies[seg]

    def settled(self, tps: set[TP] | None = None) -> bool:
        if tps is None:
            tps = set(self.tracker.partitions())
        return self.tracker.unconfirmed(tps) == 0

    def close(self) -> None:
        self._serving.close()

    def join(self, timeout: float) -> bool:
        done = self._serving.join(timeout)
        self.producer.flush(max(0.0, timeout))
        return done
