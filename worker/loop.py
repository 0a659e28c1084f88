"""The Kafka loop: poll, validate, hand pairs to inference, publish answers, commit.

The `StreamProcessor` alone owns the consumer and the producer. Inference runs on its own thread,
so the loop keeps polling (and so stays in the group) however slow a batch is; when too many
requests are in flight it pauses its partitions and keeps polling. Every read message gets
exactly one answer (a result, an error result or a dead letter), and an input offset is committed
only once the answers of it and of every offset before it are confirmed delivered
(`OffsetTracker`). On revoke, queued work of the revoked partitions is dropped (its new owner reads
it again), work under way is finished, delivered and committed before the partitions go. On lost,
nothing is committed.

With `--delivery exactly-once` the answers and the input offsets they complete are written in one
Kafka transaction (KIP-447: `send_offsets_to_transaction` with the consumer's group metadata), so
a `read_committed` reader sees each answer once, crashes included. Answers enter the transaction
in input-offset order per partition (an early error result waits for the pairs before it), so
a transaction never holds an answer whose offset it does not also commit. A failed transaction is
aborted and its partitions are rewound to their committed offsets and read again; a fenced
producer (another worker took over its transactional id) stops the worker.

This module knows nothing of torch: inference is a `Scorer` (see worker/scoring.py).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from mgeo import wire
from mgeo.settings import WorkerSettings, redact
from worker.offsets import TP, OffsetTracker
from worker.scoring import EngineFailure, Scorer

log = logging.getLogger("mgeo.worker")
kafka_log = logging.getLogger("mgeo.kafka")


_RETRY_BACKOFF = 1.0  # seconds before failed deliveries are sent again


class FatalStop(RuntimeError):
    """A condition under which the worker must stop rather than go on answering."""


@dataclass(slots=True)
class Origin:
    """Where an answer goes back to: the input offset it releases and the key/headers it keeps."""

    tp: TP
    offset: int
    gen: int
    key: bytes | None
    headers: list | None
    timestamp_ms: int


class Observer(Protocol):
    """What the loop reports as it goes (metrics plug in here); every method is optional."""

    def batch(self, pairs: int, seconds: float) -> None: ...
    def answered(self, timestamp_ms: int) -> None: ...
    def librdkafka_stats(self, raw: str) -> None: ...


class Stats:
    """Counters the metrics endpoint and the tests read. Written by the loop thread only."""

    def __init__(self) -> None:
        self.consumed = 0
        self.scored = 0
        self.error_results = 0
        self.dead_letters = 0
        self.answered = 0          # answers confirmed delivered
        self.delivery_retries = 0
        self.commits = 0           # offset commits (exactly-once: committed transactions)
        self.aborts = 0            # aborted transactions (exactly-once)
        self.rebalances = 0        # assignment, revocation and loss events
        self.assignments = 0
        self.revocations = 0
        self.losses = 0
        self.batches = 0
        self.inference_seconds = 0.0
        self.last_tick = time.monotonic()
        self.ready = False
        self.assigned: list[TP] = []


class _RateLimitedLog:
    """Logs a repeated event once per `every` seconds with a count, not once per message."""

    def __init__(self, every: float = 10.0):
        self.every = every
        self._last: dict[str, tuple[float, int]] = {}

    def __call__(self, key: str, level: int, msg: str, *args) -> None:
        now = time.monotonic()
        last, count = self._last.get(key, (0.0, 0))
        if now - last >= self.every:
            suffix = f" (+{count} more like it)" if count else ""
            log.log(level, msg + suffix, *args)
            self._last[key] = (now, 0)
        else:
            self._last[key] = (last, count + 1)


class StreamProcessor:
    def __init__(self, settings: WorkerSettings, scorer: Scorer,
                 observer: Observer | None = None):
        self.s = settings
        self.scorer = scorer
        self.stats = Stats()
        self.tracker = OffsetTracker()
        self.observer = observer
        self._work: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self._retry: list[tuple[str, Origin, bytes, list | None]] = []
        self._retry_at = 0.0  # failed deliveries are sent again no sooner than this
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._paused = False
        self._busy: frozenset[TP] = frozenset()   # partitions of the batch under inference
        self._revoking: set[TP] = set()
        self._failure: BaseException | None = None
        self._deadline: float | None = None  # set when stopping: bounds the whole drain
        self._last_commit = time.monotonic()
        self._ratelog = _RateLimitedLog()
        self._dead = deque(maxlen=settings.dead_letter_window)  # 1 per dead letter, else 0
        self._dead_count = 0
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.eos = settings.delivery == "exactly-once"
        self._held: dict[tuple[TP, int], tuple[str, Origin, bytes | None, list | None]] = {}
        self._txn = 0                 # number of the open (or next) transaction
        self._in_txn = False
        self._txn_error: str | None = None  # a delivery of the open transaction failed

    # -- configuration -----------------------------------------------------------------------

    def consumer_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "group.id": self.s.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "max.poll.interval.ms": self.s.max_poll_interval_ms,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "logger": kafka_log,  # librdkafka's own lines (disconnects...) in our log format
            # A GPU host should not hold gigabytes of prefetched messages.
            "queued.max.messages.kbytes": 16384,
            "error_cb": self._client_error,
        }
        if self.s.group_protocol == "consumer":  # KIP-848: the broker assigns and times out
            conf["group.protocol"] = "consumer"
        else:
            conf["partition.assignment.strategy"] = "cooperative-sticky"
            conf["session.timeout.ms"] = self.s.session_timeout_ms
        if self.s.group_instance_id:
            conf["group.instance.id"] = self.s.group_instance_id
        if self.observer is not None and self.s.stats_interval_ms:
            conf["statistics.interval.ms"] = self.s.stats_interval_ms
            conf["stats_cb"] = self.observer.librdkafka_stats
        conf.update(self.s.client_config("consumer"))
        return conf

    def producer_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                                "error_cb": self._client_error, "logger": kafka_log}
        if self.eos:
            conf["transactional.id"] = self.s.transactional_id_or_default()
            conf["transaction.timeout.ms"] = self.s.transaction_timeout_ms
        conf.update(self.s.client_config("producer"))
        return conf

    def _client_error(self, err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal Kafka client error: %s; stopping", err.str())
            self._failure = KafkaException(err)
            self._stop.set()
        else:
            self._ratelog(f"client:{err.code()}", logging.WARNING,
                          "Kafka client: %s (retrying; nothing is committed past unanswered "
                          "work)", err.str())

    # -- public ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop: it stops polling, drains, commits and returns."""
        self._stop.set()

    def hurry(self) -> None:
        """Stop waiting for work in flight: commit what is answered and leave now."""
        self._hurry.set()
        self._stop.set()

    def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        cconf, pconf = self.consumer_config(), self.producer_config()
        log.info("starting: input %s, output %s, dead letters %s, group %s, bootstrap %s",
                 self.s.input_topic, self.s.output_topic, self.s.dlq_topic, self.s.group_id,
                 self.s.bootstrap_servers)
        log.debug("consumer config %s", redact({k: str(v) for k, v in cconf.items()}))
        self.consumer = Consumer(cconf)
        self.producer = Producer(pconf)
        if self.eos:
            try:
                self._init_transactions(pconf["transactional.id"])
            except FatalStop as exc:
                log.error("%s", exc)
                self.consumer.close()
                return 1
        self.consumer.subscribe([self.s.input_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)
        infer = threading.Thread(target=self._infer_loop, name="inference", daemon=True)
        infer.start()
        try:
            while not self._stop.is_set():
                self._tick()
                if self.s.max_messages and self.stats.answered >= self.s.max_messages:
                    log.info("answered %d messages (--max-messages); stopping",
                             self.stats.answered)
                    break
        except (EngineFailure, FatalStop) as exc:
            self._failure = exc
        finally:
            self._shutdown(infer)
        if self._failure is not None:
            log.error("stopped on failure: %s (offsets of unanswered work were not "
                      "committed; it will be read again)", self._failure)
            return 1
        return 0

    # -- the loop ----------------------------------------------------------------------------

    def _tick(self) -> None:
        busy = not self._done.empty()
        msgs = self.consumer.consume(self.s.consume_batch, 0 if busy else self.s.poll_timeout)
        batch: list[tuple[Origin, wire.Request]] = []
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise FatalStop(f"fatal consumer error: {err.str()}")
                self._ratelog(f"consume:{err.code()}", logging.WARNING,
                              "consumer: %s", err.str())
                continue
            batch_item = self._accept(msg)
            if batch_item is not None:
                batch.append(batch_item)
        if batch:
            self._work.put(batch)
        self._publish_done()
        self._publish_retries()
        self.producer.poll(0)
        if time.monotonic() - self._last_commit >= self.s.commit_interval:
            self._commit()
        self._backpressure()
        self.stats.last_tick = time.monotonic()

    def _accept(self, msg) -> tuple[Origin, wire.Request] | None:
        tp = (msg.topic(), msg.partition())
        gen = self.tracker.add(tp, msg.offset())
        self.stats.consumed += 1
        origin = Origin(tp, msg.offset(), gen, msg.key(), msg.headers(), msg.timestamp()[1])
        dec = wire.decode_request(msg.value(), max_bytes=self.s.max_request_bytes,
                                  max_chars=self.s.max_address_chars)
        if isinstance(dec, wire.Request):
            self._judge_dead_letters(False)
            return origin, dec
        if isinstance(dec, wire.Invalid):
            self.stats.error_results += 1
            self._produce(self.s.output_topic, origin, self.scorer.error(dec))
        else:
            self.stats.dead_letters += 1
            headers = wire.dlq_headers(dec.reason, dec.detail, tp[0], tp[1], msg.offset(),
                                       msg.headers())
            self._produce(self.s.dlq_topic, origin, msg.value(), headers)
        self._judge_dead_letters(isinstance(dec, wire.DeadLetter))
        return None

    def _judge_dead_letters(self, dead: bool) -> None:
        if len(self._dead) == self._dead.maxlen:
            self._dead_count -= self._dead[0]
        self._dead.append(int(dead))
        self._dead_count += int(dead)
        window = self._dead.maxlen
        if len(self._dead) == window and self._dead_count > self.s.max_dead_letter_ratio * window:
            raise FatalStop(
                f"{self._dead_count} of the last {window} messages had no usable id; is "
                f"--input-topic ({self.s.input_topic}) the right topic? Raise "
                "--max-dead-letter-ratio to let the worker dead-letter them")

    def _produce(self, topic: str, origin: Origin, value: bytes | None,
                 headers: list | None = None) -> None:
        """Answer the message at `origin`: at once (at-least-once), or into the open transaction
        in offset order (exactly-once)."""
        hdrs = headers if headers is not None else origin.headers
        if not self.eos:
            self._send(topic, origin, value, hdrs)
            return
        if not self.tracker.current(origin.tp, origin.gen):
            return  # its partition was revoked or rewound: the input is read again
        self._held[(origin.tp, origin.offset)] = (topic, origin, value, hdrs)
        for offset in self.tracker.done(origin.tp, origin.offset, origin.gen):
            self._send(*self._held.pop((origin.tp, offset)))

    def _send(self, topic: str, origin: Origin, value: bytes | None,
              hdrs: list | None) -> None:
        if self.eos and not self._in_txn:
            self.producer.begin_transaction()
            self._in_txn = True
        txn = self._txn

        def delivered(err, _msg, origin=origin, topic=topic, value=value, hdrs=hdrs):
            if err is None:
                if not self.eos:
                    self.tracker.done(origin.tp, origin.offset, origin.gen)
                self.stats.answered += 1
                if self.observer is not None:
                    self.observer.answered(origin.timestamp_ms)
            else:
                self._undelivered(topic, origin, value, hdrs, txn, err)

        while True:
            try:
                self.producer.produce(topic, value=value, key=origin.key, headers=hdrs,
                                      on_delivery=delivered)
                return
            except BufferError:  # the local queue is full: serve deliveries, keep the group
                self.producer.poll(0.1)
                self.consumer.consume(0, 0)  # no-op poll that serves group callbacks
            except KafkaException as exc:  # refused at once (e.g. an unknown or invalid topic)
                err = exc.args[0]
                if err.fatal():
                    raise FatalStop(f"fatal producer error: {err.str()}") from None
                self._undelivered(topic, origin, value, hdrs, txn, err)
                return

    def _undelivered(self, topic: str, origin: Origin, value: bytes | None, hdrs: list | None,
                     txn: int, err: KafkaError) -> None:
        """An answer did not reach the broker: nothing is committed past it. At-least-once
        sends it again after a pause; exactly-once aborts the transaction at the next commit
        (and reads its inputs again)."""
        if self.eos:
            if txn == self._txn and self._txn_error is None:  # else: an aborted one's
                self._txn_error = f"could not deliver to {topic}: {err.str()}"
            return
        self.stats.delivery_retries += 1
        self._ratelog(f"deliver:{topic}", logging.WARNING,
                      "could not deliver to %s: %s; retrying, and committing nothing past it",
                      topic, err.str())
        self._retry.append((topic, origin, value, hdrs))
        self._retry_at = time.monotonic() + _RETRY_BACKOFF

    def _publish_done(self) -> None:
        while True:
            try:
                item = self._done.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, BaseException):
                raise item
            origins, values, seconds, failed = item
            self.stats.batches += 1
            self.stats.scored += len(values) - failed
            self.stats.error_results += failed  # scoring_failed answers
            self.stats.inference_seconds += seconds
            if self.observer is not None:
                self.observer.batch(len(values), seconds)
            for origin, value in zip(origins, values):
                self._produce(self.s.output_topic, origin, value)

    def _publish_retries(self) -> None:
        if not self._retry or time.monotonic() < self._retry_at:
            return
        retry, self._retry = self._retry, []
        for topic, origin, value, hdrs in retry:
            if self.tracker.current(origin.tp, origin.gen):
                self._produce(topic, origin, value, hdrs)

    def _commit(self, tps: list[TP] | None = None) -> None:
        if self.eos:
            self._commit_transaction()
            return
        self._last_commit = time.monotonic()
        positions = self.tracker.to_commit(tps)
        if not positions:
            return
        offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
        try:
            result = self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            self._ratelog("commit", logging.WARNING, "commit failed: %s (will retry)",
                          exc.args[0].str())
            return
        ok = {(tp.topic, tp.partition): tp.offset for tp in result or offsets if tp.error is None}
        for tp in result or []:
            if tp.error is not None:
                self._ratelog("commit", logging.WARNING, "commit of %s[%d] failed: %s (will "
                              "retry)", tp.topic, tp.partition, tp.error.str())
        self.tracker.committed({tp: pos for tp, pos in positions.items() if tp in ok})
        self.stats.commits += 1

    def _backpressure(self) -> None:
        inflight = self.tracker.inflight
        if not self._paused and inflight >= self.s.max_inflight:
            self._paused = True
            self.consumer.pause(self.consumer.assignment())
            log.info("%d requests in flight: pausing consumption (still polling)", inflight)
        elif self._paused and inflight <= self.s.max_inflight // 2:
            self._paused = False
            self.consumer.resume(self.consumer.assignment())
            log.info("%d requests in flight: resuming consumption", inflight)

    # -- exactly-once ------------------------------------------------------------------------

    def _txn_deadline(self) -> float:
        # Retrying a commit blocks the loop; stay well inside max.poll.interval.ms, and inside
        # the drain's deadline when stopping.
        limit = time.monotonic() + min(self.s.shutdown_timeout, self.s.max_poll_interval_ms / 2000)
        return min(limit, self._deadline) if self._deadline else limit

    def _init_transactions(self, tid: str) -> None:
        deadline = self._txn_deadline()
        while True:
            try:
                self.producer.init_transactions(10)
                log.info("exactly-once: transactional id %s ready", tid)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable() and time.monotonic() < deadline and not self._stop.is_set():
                    self._ratelog("init_txn", logging.WARNING,
                                  "exactly-once: cannot initialise transactions yet (%s); "
                                  "retrying", err.str())
                    continue
                raise FatalStop(f"exactly-once: cannot initialise transactional id {tid}: "
                                f"{err.str()}. Check that the broker supports transactions and "
                                "that the client may write them (ACL TransactionalId)") from None

    def _commit_transaction(self) -> None:
        self._last_commit = time.monotonic()
        if self._txn_error is not None:
            self._abort_transaction(self._txn_error)
            return
        if not self._in_txn:
            return
        positions = self.tracker.to_commit()
        offsets = [TopicPartition(t, p, off) for (t, p), off in positions.items()]
        deadline = self._txn_deadline()
        step = "send_offsets"
        while True:
            try:
                if step == "send_offsets" and offsets:
                    self.producer.send_offsets_to_transaction(
                        offsets, self.consumer.consumer_group_metadata(), 10)
                step = "commit"
                self.producer.commit_transaction(10)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise FatalStop(self._fatal_txn_message(err)) from None
                if err.txn_requires_abort() or self._txn_error is not None:
                    self._abort_transaction(self._txn_error or err.str())
                    return
                if err.retriable() and time.monotonic() < deadline:
                    self._ratelog("commit_txn", logging.WARNING,
                                  "exactly-once: transaction commit not done yet (%s); "
                                  "retrying", err.str())
                    continue
                self._abort_transaction(err.str())
                return
        self._in_txn = False
        self._txn += 1
        self.tracker.committed(positions)
        self.stats.commits += 1

    def _abort_transaction(self, reason: str) -> None:
        """Abort the open transaction and read again every input it answered."""
        self._ratelog("abort", logging.WARNING, "exactly-once: aborting the transaction (%s); "
                      "rewinding to the committed offsets", reason)
        deadline = self._txn_deadline()
        while self._in_txn:
            try:
                self.producer.abort_transaction(10)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise FatalStop(self._fatal_txn_message(err)) from None
                if not err.retriable() or time.monotonic() >= deadline:
                    raise FatalStop(f"exactly-once: cannot abort the transaction: {err.str()}; "
                                    "stopping (nothing of it was committed)") from None
        self._in_txn = False
        self._txn += 1
        self._txn_error = None
        self._held.clear()
        self.stats.aborts += 1
        for tp in self.tracker.partitions():
            target = self.tracker.rewind(tp)
            if target is None:
                continue
            try:
                self.consumer.seek(TopicPartition(tp[0], tp[1], target))
            except KafkaException as exc:
                # Reading on past the aborted answers would lose them: stop instead; a restart
                # reads from the committed offsets.
                raise FatalStop(f"exactly-once: cannot rewind {tp[0]}[{tp[1]}] to {target} "
                                f"after an abort: {exc.args[0].str()}") from None

    def _fatal_txn_message(self, err: KafkaError) -> str:
        return (f"exactly-once: the transactional producer failed fatally: {err.str()}. If it "
                "was fenced, another worker uses the same transactional id "
                f"({self.s.transactional_id_or_default()}): give each worker its own "
                "--transactional-id (e.g. the pod name)")

    # -- inference thread --------------------------------------------------------------------

    def _live(self, origin: Origin) -> bool:
        return origin.tp not in self._revoking and self.tracker.current(origin.tp, origin.gen)

    def _infer_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            items = list(item)
            while len(items) < self.s.max_batch_pairs:
                try:
                    more = self._work.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._work.put(None)  # keep the stop sign for the outer loop
                    break
                items.extend(more)
            items = [(o, r) for o, r in items if self._live(o)]
            if not items:
                continue
            self._busy = frozenset(o.tp for o, _ in items)
            try:
                start, failed = time.perf_counter(), self.scorer.failed_pairs
                values = self.scorer.score([r for _, r in items])
                self._done.put(([o for o, _ in items], values, time.perf_counter() - start,
                                self.scorer.failed_pairs - failed))
            except BaseException as exc:  # noqa: BLE001 - handed to the loop, which stops
                self._done.put(exc)
                return
            finally:
                self._busy = frozenset()

    # -- rebalances --------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        for tp in tps:
            self.tracker.assign(tp)
            self._revoking.discard(tp)
        self.stats.rebalances += 1
        self.stats.assignments += 1
        self.stats.ready = True  # joined the group (an assignment may be empty)
        self.stats.assigned = sorted(set(self.stats.assigned) | set(tps))
        log.info("assigned %d partitions: %s", len(tps), _names(tps))
        if self._paused and partitions:
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        if not tps:
            return
        self.stats.rebalances += 1
        self.stats.revocations += 1
        self._revoking.update(tps)
        # Finish the batch under way if it holds these partitions, deliver, commit, let go.
        deadline = self._deadline or time.monotonic() + self.s.shutdown_timeout
        while self._busy & set(tps) and time.monotonic() < deadline and self._failure is None:
            self._publish_done()
            self.producer.poll(0.05)
        self._publish_done()
        self._publish_retries()
        if not self.eos:
            self.producer.flush(max(0.0, deadline - time.monotonic()))
        self._commit(tps)  # exactly-once: the whole transaction, every partition's offsets
        self._release(tps)
        log.info("revoked %d partitions: %s (answered work committed)", len(tps), _names(tps))

    def _release(self, tps: list[TP]) -> None:
        """Let partitions go (revoked or lost): late answers for them are ignored, and answers
        that waited in the transaction for their earlier offsets are forgotten."""
        gone = set(tps)
        for tp in tps:
            self.tracker.release(tp)
        for key in [k for k in self._held if k[0] in gone]:
            del self._held[key]
        self.stats.assigned = [tp for tp in self.stats.assigned if tp not in gone]

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.stats.rebalances += 1
        self.stats.losses += 1
        self._release(tps)
        if self.eos and (self._in_txn or self._txn_error):
            # The open transaction answers inputs of the lost partitions, whose offsets it can
            # no longer commit: abort it all, and read the kept partitions' share again.
            try:
                self._abort_transaction("partitions lost")
            except FatalStop as exc:
                self._failure = exc
                self._stop.set()
        log.warning("lost %d partitions: %s (nothing committed; their work is read again by "
                    "the new owner)", len(tps), _names(tps))

    # -- shutdown ----------------------------------------------------------------------------

    def _shutdown(self, infer: threading.Thread) -> None:
        log.info("stopping: finishing %d requests in flight", self.tracker.inflight)
        self._work.put(None)
        deadline = self._deadline = time.monotonic() + self.s.shutdown_timeout
        while time.monotonic() < deadline and self._failure is None and not self._hurry.is_set():
            try:
                self._publish_done()
            except BaseException as exc:  # noqa: BLE001
                self._failure = exc
                break
            self._publish_retries()
            self.producer.poll(0.05)
            if not infer.is_alive() and self._done.empty() and self.tracker.inflight == 0:
                break
        if self.tracker.inflight:
            log.warning("%d requests unanswered at shutdown; they will be read again",
                        self.tracker.inflight)
        if not self.eos:  # (a transaction commit flushes by itself)
            self.producer.flush(1.0 if self._hurry.is_set() else
                                max(1.0, deadline - time.monotonic()))
        try:
            self._commit()
        except FatalStop as exc:
            self._failure = self._failure or exc
        self.consumer.close()
        log.info("stopped: %d answered (%d scored, %d error results, %d dead letters)",
                 self.stats.answered, self.stats.scored, self.stats.error_results,
                 self.stats.dead_letters)


def _names(tps: list[TP]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps)) or "none"
