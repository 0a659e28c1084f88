"""Reading the results topic as a stream: typed results, offsets committed as you go.

For downstream services (no torch needed)::

    from mgeo.producer.results import ResultReader

    with ResultReader("kafka:9092", topic="address-scores", group_id="geo-sync") as reader:
        for res in reader:                  # blocks for the next result; Ctrl-C or stop() ends it
            if res.ok:
                upsert(res.id, res.label, res.score, res.meta)
            else:
                log_failure(res.id, res.error_code, res.error_message)

Delivery is at-least-once, like the workers': a result's offset is committed only after your
loop body has finished with it (when you ask for the next one, or leave the `with` block
without an exception), every `commit_interval` seconds and on close. A crash therefore repeats
the results handled since the last commit, and a worker crash can publish an id twice anyway,
so handle results idempotently, by `id` (an upsert, or a compacted topic keyed by id).

Without `group_id` the reader assigns itself every partition, reads from the start (or the
end) and commits nothing: for tools and tests. Results are read `read_committed`, so an
exactly-once fleet's aborted answers never show.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Iterator, Mapping

from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException,
                             Message, TopicPartition)

from mgeo import wire
from mgeo.kafka import client_logging, partitions_of
from mgeo.logs import RateLimitedLog
from mgeo.wire import Result

__all__ = ["Result", "ResultReader"]

log = logging.getLogger("mgeo.results")


class ResultReader:
    """Typed results from a results topic, as an iterator or in batches (`poll`).

    `config` is a librdkafka consumer config (bootstrap.servers at least, credentials...);
    `bootstrap_servers` is a shortcut for it. Messages that are not results are skipped,
    counted in `unreadable` and logged (rate-limited); their offsets are committed like the
    rest, so one bad message never blocks the stream.
    """

    def __init__(self, bootstrap_servers: str | None = None, topic: str = "address-scores",
                 group_id: str | None = None, *, config: Mapping[str, Any] | None = None,
                 from_beginning: bool = True, commit_interval: float | None = 5.0,
                 batch_size: int = 500, check_timeout: float = 10.0):
        conf: dict[str, Any] = dict(config or {})
        if bootstrap_servers is not None:
            conf["bootstrap.servers"] = bootstrap_servers
        if "bootstrap.servers" not in conf:
            raise ValueError("ResultReader needs bootstrap_servers "
                             "(or config['bootstrap.servers'])")
        self.topic = topic
        self.group_id = group_id
        self.commit_interval = commit_interval
        self.batch_size = batch_size
        self.messages = 0     # result messages read, unreadable ones included
        self.unreadable = 0
        self._skip_log = RateLimitedLog(log, 10.0)
        self._stop = threading.Event()
        self._pending: dict[tuple[str, int], int] = {}  # handled, not yet committed: next offset
        self._current: list[Message] = []               # handed out, not yet known handled
        self._backlog: list[tuple[Message, Result | None]] = []  # read, not yet handed out
        self._last_commit = time.monotonic()
        self._assigned = True
        # Fails now, with one clear line, when the brokers are unreachable or the topic absent.
        parts = partitions_of(conf, topic, check_timeout)
        consumer_conf = {
            **client_logging("mgeo.results"),
            "group.id": group_id or f"mgeo-results-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False, "isolation.level": "read_committed",
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            "enable.partition.eof": False, **conf}
        self._consumer = Consumer(consumer_conf)
        if group_id is not None:
            self._assigned = False  # the idle clock of stream() starts at the first assignment
            self._consumer.subscribe([topic], on_assign=self._on_assign,
                                     on_revoke=self._on_revoke, on_lost=self._on_lost)
        else:
            start = OFFSET_BEGINNING if from_beginning else OFFSET_END
            self._consumer.assign([TopicPartition(topic, p, start) for p in parts])

    @property
    def consumer(self):
        """The consumer, for its partitions' watermarks (see Collector.backlog)."""
        return self._consumer

    # -- reading ------------------------------------------------------------------------------

    def poll(self, timeout: float = 1.0) -> list[Result]:
        """The next results that arrive within `timeout` seconds (maybe none). Calling it again
        marks the previous batch handled (its offsets are committed at the next commit)."""
        self._handled()
        got = self._fetch(timeout)
        self._current.extend(msg for msg, _ in got)
        self._maybe_commit()
        return [res for _, res in got if res is not None]

    def __iter__(self) -> Iterator[Result]:
        return self.stream()

    def stream(self, idle_timeout: float | None = None,
               deadline: float | None = None) -> Iterator[Result]:
        """Results one at a time as they arrive, until `stop()`, `idle_timeout` seconds without
        a message, or `deadline` (a time.monotonic() value); None waits for ever. A result is
        taken as handled when the next one is asked for."""
        self._handled()
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return
            if not self._assigned:
                last = now  # joining the group is not idleness
            elif idle_timeout is not None and now - last >= idle_timeout:
                return
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - now))
            got = self._fetch(wait)
            if got:
                last = time.monotonic()
            for i, (msg, res) in enumerate(got):
                if self._stop.is_set():  # the rest waits for the next read
                    self._backlog = got[i:] + self._backlog
                    break
                self._current.append(msg)
                if res is not None:
                    yield res
                self._handled()
            self._maybe_commit()
        self._stop.clear()

    def _fetch(self, timeout: float) -> list[tuple[Message, Result | None]]:
        if self._backlog:
            out, self._backlog = self._backlog, []
            return out
        out = []
        for msg in self._consumer.consume(self.batch_size, timeout):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    if err.fatal():
                        raise KafkaException(err)
                    self._skip_log("consume:%d" % err.code(), logging.WARNING,
                                   "reading %s: %s", self.topic, err.str())
                continue
            self.messages += 1
            try:
                out.append((msg, wire.parse_result(msg.value() or b"")))
            except ValueError as exc:
                self.unreadable += 1
                self._skip_log("unreadable", logging.WARNING,
                               "skipped a message that is not a result (%s [%d] offset %d): %s",
                               msg.topic(), msg.partition(), msg.offset(), exc)
                out.append((msg, None))
        return out

    def stop(self) -> None:
        """Make the iterator end after the current result (from a signal handler or another
        thread)."""
        self._stop.set()

    # -- offsets ------------------------------------------------------------------------------

    def commit(self) -> None:
        """Commit the offsets of every result handed out so far (the one in hand included).
        Does nothing without a group."""
        self._handled()
        if self.group_id is None or not self._pending:
            self._pending.clear()
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._pending.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                raise
        self._pending.clear()
        self._last_commit = time.monotonic()

    def _handled(self) -> None:
        for msg in self._current:
            key = (msg.topic(), msg.partition())
            self._pending[key] = max(self._pending.get(key, -1), msg.offset() + 1)
        self._current.clear()

    def _maybe_commit(self) -> None:
        if (self.commit_interval is not None and self.group_id is not None and self._pending
                and time.monotonic() - self._last_commit >= self.commit_interval):
            self.commit()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if partitions:
            self._assigned = True

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # What was handled of a partition going to another reader is committed before it goes.
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._handled()
        mine = [TopicPartition(t, p, o) for (t, p), o in self._pending.items() if (t, p) in gone]
        if mine and self.commit_interval is not None:  # None: the caller commits, no one else
            try:
                consumer.commit(offsets=mine, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed (those results will be read again): %s",
                            exc.args[0].str())
        for key in gone:
            self._pending.pop(key, None)
        self._backlog = [x for x in self._backlog if (x[0].topic(), x[0].partition()) not in gone]

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        for key in gone:  # no longer ours: another reader has them and reads them again
            self._pending.pop(key, None)
        self._backlog = [x for x in self._backlog if (x[0].topic(), x[0].partition()) not in gone]

    # -- lifetime -----------------------------------------------------------------------------

    def close(self, commit: bool = True) -> None:
        """Commit what was handed out (unless `commit=False`: then nothing more is committed,
        and the group's next reader reads it again) and leave the group."""
        if self._consumer is None:
            return
        try:
            if commit:
                self.commit()
            else:
                self._current.clear()
                self._pending.clear()
        finally:
            self._consumer.close()
            self._consumer = None

    def __enter__(self) -> "ResultReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        self._current.clear()  # the result in hand was not handled: it is read again
        try:
            self.close()  # what was handled before it is committed
        except KafkaException as err:  # do not hide the exception that ended the loop
            log.warning("could not commit on the way out (those results will be read "
                        "again): %s", err.args[0].str() if err.args else err)
