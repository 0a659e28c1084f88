"""Reading the results topic: `mgeo collect` and a `Collector` for tests and the demo.

Results are read `read_committed` (exactly-once workers write in transactions) and kept one per
id (the first seen). By default the collector assigns itself every partition from the start, so it
needs no group join; with --group-id it joins that group and commits what it has written.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from typing import Any, Callable

from confluent_kafka import (OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException,
                             TopicPartition)
from tqdm import tqdm

from mgeo import wire
from mgeo.admin import partitions_of
from mgeo.pairs_io import InputError, write_results
from mgeo.settings import CollectSettings

log = logging.getLogger("mgeo.collect")


class Collector:
    """Collects result objects by id from a results topic."""

    def __init__(self, config: dict[str, Any], topic: str, group_id: str | None = None,
                 from_beginning: bool = True):
        self.topic = topic
        self.results: dict[str, dict[str, Any]] = {}
        self.messages = 0      # every result message read, duplicates included
        self.duplicates = 0
        self.unreadable = 0
        self.labels: list[str] = []
        conf = {"group.id": group_id or f"mgeo-collect-{uuid.uuid4().hex[:12]}",
                "enable.auto.commit": False, "isolation.level": "read_committed",
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.partition.eof": False, **config}
        self._consumer = Consumer(conf)
        self._grouped = group_id is not None
        if self._grouped:
            self._consumer.subscribe([topic])
        else:
            start = OFFSET_BEGINNING if from_beginning else OFFSET_END
            parts = partitions_of(config, topic)
            self._consumer.assign([TopicPartition(topic, p, start) for p in parts])

    def _add(self, value: bytes | None) -> bool:
        self.messages += 1
        try:
            res = wire.decode_result(value or b"")
            rid = res["id"]
        except (ValueError, KeyError, TypeError):
            self.unreadable += 1
            return False
        if rid in self.results:
            self.duplicates += 1
            return False
        self.results[rid] = res
        for lab in res.get("probs") or ():
            if lab not in self.labels:
                self.labels.append(lab)
        return True

    def collect(self, expect: int | None = None, timeout: float = 30.0,
                on_new: Callable[[int], None] | None = None,
                deadline: float | None = None) -> int:
        """Read until `expect` distinct ids, `timeout` seconds without a new one, or `deadline`
        (a time.monotonic() value). Returns the number of new ids."""
        new = 0
        last_new = time.monotonic()
        while expect is None or len(self.results) < expect:
            now = time.monotonic()
            if now - last_new > timeout or (deadline is not None and now > deadline):
                break
            for msg in self._consumer.consume(1000, 0.2):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consumer error: %s", msg.error())
                    continue
                if self._add(msg.value()):
                    new += 1
                    last_new = time.monotonic()
                    if on_new is not None:
                        on_new(1)
        return new

    def commit(self) -> None:
        if not self._grouped:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:  # nothing read: nothing to commit
                raise

    def close(self) -> None:
        self._consumer.close()


def run(s: CollectSettings) -> int:
    """`mgeo collect`."""
    try:
        collector = Collector(s.client_config("consumer"), s.output_topic, s.collect_group_id,
                              s.from_beginning)
    except (RuntimeError, ValueError) as exc:
        print(f"mgeo collect: {exc}", file=sys.stderr)
        return 2
    bar = tqdm(total=s.expect, desc="collected", unit=" results",
               disable=not (s.progress and sys.stderr.isatty()))
    try:
        collector.collect(s.expect, s.timeout, on_new=bar.update)
    except KeyboardInterrupt:
        print("mgeo collect: interrupted; writing what was collected", file=sys.stderr)
    finally:
        bar.close()
    try:
        n = write_results(s.out, collector.results.values(), collector.labels)
    except InputError as exc:
        print(f"mgeo collect: {exc}", file=sys.stderr)
        collector.close()
        return 2
    collector.commit()
    collector.close()
    errors = sum(1 for r in collector.results.values() if "error" in r)
    print(f"mgeo collect: {n} results ({errors} errors, {collector.duplicates} duplicates "
          f"skipped) written to {s.out}", file=sys.stderr)
    if s.expect is not None and n < s.expect:
        print(f"mgeo collect: expected {s.expect}, got {n} before {s.timeout:.0f}s of silence",
              file=sys.stderr)
        return 1
    return 0
