"""The Kafka loop: poll, pause, rebalance, commit, shut down; everything else is delegated.

The `StreamProcessor` owns the consumer and the producer. Each poll returns as soon as a message
is there (and takes whatever else is already fetched) and is submitted to the first of the
composed steps (compose.py): `Intake` turns the messages into a unit, the `InferenceStage`
scores it and submits it to the delivery step (`AtLeastOnce` or `ExactlyOnce`), which produces
its answers at once. The loop itself only commits, every --commit-interval, what the delivery
step says is final. When too many requests are in flight it
pauses its partitions and keeps polling, so it stays in the group however slow a batch is; the
loop owns that state, and every assignment is paused or resumed by it (librdkafka would keep
an earlier pause of the same partition). `ReadWatch` (liveness.py) notices partitions held and
not read.

Rebalances: before a partition goes, its queued work is dropped (the new owner reads it again),
work under way is finished and delivered, and its offsets are committed; then it is released,
and no later answer of it is sent. A lost partition is released at once, with nothing committed.

Stopping: the first SIGTERM drains (finishes and commits what was read, in bounded time), a
second one means "leave now" everywhere, waits for a rebalance included. A failure anywhere
(engine broken, fenced producer, unwritable answers) stops the loop with exit code 1 and one
line; after it nothing more is committed.

This module knows nothing of torch: inference is a `Scorer` (see scoring.py).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaError, KafkaException

from mgeo.logs import RateLimitedLog
from mgeo.settings import WorkerSettings
from mgeo.worker.stream.clients import Clients, fatal_line, kafka_clients, open_clients
from mgeo.worker.stream.compose import ComposeSteps, Wiring, compose
from mgeo.worker.stream.delivery import Delivery
from mgeo.worker.stream.events import Control, Observer, Stats
from mgeo.worker.stream.inference import InferenceStage
from mgeo.worker.stream.intake import FatalStop, Intake
from mgeo.worker.stream.liveness import ReadWatch
from mgeo.worker.stream.offsets import TP, OffsetTracker
from mgeo.worker.stream.scoring import Scorer

log = logging.getLogger("mgeo.worker")

# After a stop that leaves work unfinished, the batch on the model may take this long to end
# (the engine must not be closed while it runs; see worker/app.py).
BATCH_GRACE = 5.0


class StreamProcessor:
    """The Kafka loop over the composed steps (`steps`: compose.compose by default)."""

    def __init__(self, settings: WorkerSettings, scorer: Scorer, *,
                 observer: Observer | None = None, clients: Clients | None = None,
                 stats: Stats | None = None, steps: ComposeSteps = compose):
        self.s = settings
        self.compose = steps
        self.scorer = scorer
        self.observer = observer
        self.clients = clients or kafka_clients()
        self.stats = stats or Stats()
        self.tracker = OffsetTracker()
        self.control = Control()
        self.progress = self.control.progress  # notified whenever work moves or stops
        self.consumer = None
        self.producer = None
        self.intake: Intake | None = None
        self.stage: InferenceStage | None = None  # started once the delivery step is ready
        self.delivery: Delivery | None = None
        self._ratelog = RateLimitedLog(log)
        self._paused = False
        self._closing = False
        self._last_commit = time.monotonic()
        self.watch = ReadWatch(self.stats, settings.liveness_timeout)

    # -- control (see events.Control) -----------------------------------------------------

    @property
    def failure(self) -> BaseException | None:
        return self.control.failure

    def stop(self) -> None:
        """Stop polling, drain, commit and return."""
        self.control.stop()

    def hurry(self) -> None:
        """Stop waiting for work in flight anywhere: commit what is answered and leave now."""
        self.control.hurry()

    def fail(self, exc: BaseException) -> None:
        """Stop on a failure (the first one is kept); nothing more is committed."""
        self.control.fail(exc)

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; returns the process exit code (0, or 1 after a failure)."""
        try:
            self._open()
        except Exception as exc:  # noqa: BLE001 - one line and exit 1, never a traceback
            log.error("%s", exc if isinstance(exc, FatalStop) else
                      f"cannot start: {_reason(exc)}")
            self._close_consumer()
            return 1
        try:
            while not self.control.stopping.is_set():
                self._tick()
        except Exception as exc:  # noqa: BLE001 - FatalStop and anything unexpected: stop
            self.fail(exc)
        self._shutdown()
        if self.failure is not None:
            log.error("stopped on failure: %s (offsets of unanswered work were not committed; "
                      "it will be read again)", _reason(self.failure))
            return 1
        return 0

    def _open(self) -> None:
        s = self.s
        self.consumer, self.producer = open_clients(
            s, self.clients, on_fatal=lambda err: self.fail(FatalStop(fatal_line(s, err))),
            stats_cb=self.observer.librdkafka_stats if self.observer is not None else None)
        steps = self.compose(Wiring(s, self.scorer, self.producer, self.tracker, self.stats,
                                    self.control, self.observer))
        self.intake, self.delivery = steps.intake, steps.delivery
        # (exactly-once: after its transactional id is ready)
        if not self.delivery.start() or self.control.stopping.is_set():
            return  # told to stop while it was being set up
        self.stage = steps.inference
        self.stage.start()
        self.consumer.subscribe([s.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        self.control.notify()  # open: clients made, steps started (waiters may be waiting for it)

    def _tick(self) -> None:
        first = self.consumer.poll(self.s.poll_timeout)  # returns as soon as a message is there
        now = time.monotonic()
        if first is not None:
            msgs = [first]
            if self.s.consume_batch > 1:  # and whatever else is already fetched, no waiting
                msgs += self.consumer.consume(self.s.consume_batch - 1, 0)
            good = [m for m in msgs if m.error() is None or _readable(m.error(), self._ratelog)]
            if good:
                self.intake.submit(good)
                for tp in {(self.s.input_topic, m.partition()) for m in good}:
                    if self.tracker.owns(tp):
                        self.watch.read(tp, now)
        for step in (self.intake, self.stage, self.delivery):
            step.poll()
        if now - self._last_commit >= self.s.commit_interval:
            self._commit()
        self._backpressure()
        self.watch.check(self.consumer, self._paused, now)
        self.stats.ticked(now)
        if self.s.max_messages and self.stats.answered >= self.s.max_messages:
            log.info("answered %d messages (--max-messages); stopping", self.stats.answered)
            self.control.stop()

    def _commit(self, tps: set[TP] | None = None) -> None:
        self._last_commit = time.monotonic()
        if self.failure is None:
            self.delivery.commit(self.consumer, tps)

    def _backpressure(self) -> None:
        """Pause every partition held when too much is in flight; resume every partition held
        (whatever librdkafka remembers of earlier pauses) once half of it is answered."""
        inflight = self.tracker.inflight
        if not self._paused and inflight >= self.s.max_inflight:
            self._paused = True
            self.consumer.pause(self.consumer.assignment())
            log.info("%d requests in flight: pausing consumption (still polling)", inflight)
        elif self._paused and inflight <= self.s.max_inflight // 2:
            self._paused = False
            self.consumer.resume(self.consumer.assignment())
            self.watch.start(self.tracker.partitions(), time.monotonic())
            log.info("%d requests in flight: resuming consumption", inflight)

    # -- rebalances --------------------------------------------------------------------------

    def _on_assign(self, consumer, partitions) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        for tp in tps:
            self.tracker.assign(tp)
        self.watch.start(tps, time.monotonic())
        self.stats.joined(tps)
        log.info("assigned %d partitions: %s", len(tps), _names(tps))
        if partitions:
            # librdkafka keeps a partition's pause flag across unassign and assign: a partition
            # paused before it was lost comes back paused. Whether it is read is decided here,
            # by the loop's own state, on every assignment.
            consumer.incremental_assign(partitions)
            if self._paused or self.control.stopping.is_set():
                consumer.pause(partitions)
            else:
                consumer.resume(partitions)
        self.control.notify()

    def _on_revoke(self, consumer, partitions) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        if not tps:
            return
        self.stats.revocations += 1
        self.control.notify()
        finished = True
        if self.failure is None:
            self.stage.drop_queued(tps)
            if not self._closing:  # (when closing, the drain already waited)
                deadline = self.control.bounded(self.s.shutdown_timeout)
                finished = self.control.wait(lambda: not self.stage.busy(tps)
                                      and self.delivery.settled(tps), deadline)
            try:
                self._commit(tps)  # exactly-once: the whole transaction
            except FatalStop as exc:
                self.fail(exc)
        unanswered = self._release(tps)
        log.info("revoked %d partitions: %s (%s)", len(tps), _names(tps),
                 _revoked(self.failure is not None, finished, unanswered))

    def _release(self, tps: set[TP]) -> int:
        unanswered = sum(self.tracker.release(tp) for tp in tps)
        self.watch.forget(tps)
        self.stats.left(tps)
        self.control.notify()
        return unanswered

    def _on_lost(self, consumer, partitions) -> None:
        tps = {(p.topic, p.partition) for p in partitions}
        self.stats.losses += 1
        unanswered = self._release(tps)  # (notifies)
        if self.stage is not None:
            self.stage.drop_queued(tps)
        try:
            self.delivery.lost(consumer, tps)
        except FatalStop as exc:
            self.fail(exc)
        log.warning("lost %d partitions: %s (nothing committed; their %d unanswered requests "
                    "are read again by the new owner)", len(tps), _names(tps), unanswered)

    # -- shutdown ----------------------------------------------------------------------------

    def _shutdown(self) -> None:
        deadline = self.control.deadline = time.monotonic() + self.s.shutdown_timeout
        if self.consumer is not None:
            try:
                self.consumer.pause(self.consumer.assignment())
            except KafkaException:
                pass
        if self.stage is not None:
            self.stage.close()
        drained = False
        if self.failure is None:
            log.info("stopping: finishing %d requests in flight", self.tracker.inflight)
            drained = self._drain(deadline)
        if not drained and self.stage is not None:
            self.stage.abandon()  # the rest is read again by the next owner
        try:
            self._commit()
        except Exception as exc:  # noqa: BLE001 - e.g. fenced at the last commit
            self.fail(exc)
        unanswered = self.tracker.unanswered()
        if unanswered:
            log.warning("%d requests read were not answered and committed; they will be read "
                        "again", unanswered)
        self._closing = True
        self._close_consumer()
        hurry = self.control.hurrying.is_set() or self.failure is not None
        if self.stage is not None:
            self.stage.join(BATCH_GRACE)
        if self.delivery is not None:
            self.delivery.close()
            self.delivery.join(1.0 if hurry else max(1.0, deadline - time.monotonic()))
        log.info("stopped: %d answered (%d scored, %d error results, %d dead letters)",
                 self.stats.answered, self.stats.scored, self.stats.error_results,
                 self.stats.dead_letters)

    def _drain(self, deadline: float) -> bool:
        """Finish what was read, committing every --commit-interval (an exactly-once drain
        thus never sits in one transaction longer than that); whether it all finished."""
        if self.stage is None or self.delivery is None:
            return True
        while True:
            step = min(deadline, time.monotonic() + self.s.commit_interval)
            done = self.control.wait(lambda: self.stage.idle() and self.delivery.settled(), step)
            if done or self.control.hurrying.is_set() or self.failure is not None \
                    or time.monotonic() >= deadline:
                return done
            try:
                self._commit()
            except FatalStop as exc:
                self.fail(exc)
                return False
            self.consumer.poll(0)  # serves rebalance callbacks; paused, it returns nothing new

    def _close_consumer(self) -> None:
        if self.consumer is None:
            return
        try:
            self.consumer.close()
        except Exception as exc:  # noqa: BLE001 - closing must not turn into a traceback
            log.warning("closing the consumer: %s", _reason(exc))


def _readable(err: KafkaError, ratelog: RateLimitedLog) -> bool:
    """A consumer error in place of a message: a fatal one stops the worker, the others are
    logged (rate-limited) and passed over."""
    if err.fatal():
        raise FatalStop(f"fatal consumer error: {err.str()}")
    ratelog(f"consume:{err.code()}", logging.WARNING, "consumer: %s", err.str())
    return False


def _revoked(failed: bool, finished: bool, unanswered: int) -> str:
    """What became of a revoked partition's work, for the log."""
    if failed:
        what = "nothing committed after the failure"
    elif finished:
        what = "answered work committed"
    else:
        what = "answered work committed; the wait for the rest was cut short"
    if unanswered:
        what += f"; {unanswered} unanswered requests go to the next owner"
    return what


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0].str()
    return str(exc) or type(exc).__name__


def _names(tps) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps)) or "none"
