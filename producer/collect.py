"""`mgeo collect` and the `Collector` behind it (and behind the demo and the tests).

A `Collector` reads a results topic through `ResultReader` (read_committed, typed) and keeps one
result per id, the first seen, in memory, as the wire's dicts. It is for a bounded job: a file
of results, a test. A service that consumes results for ever should iterate a `ResultReader`
itself (see `mgeo.producer.results`). By default the collector assigns itself every partition
from the start, so it needs no group join; with a group id it joins that group and commits,
once the file is written, what it has read.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable

from confluent_kafka import KafkaException, TopicPartition
from tqdm import tqdm

from mgeo.readers import InputError
from mgeo.kafka import KafkaUnavailable
from mgeo.producer.results import ResultReader
from mgeo.settings import CollectSettings
from mgeo.writers import check_output, write_results

log = logging.getLogger("mgeo.collect")


class Collector:
    """Collects result objects by id from a results topic."""

    def __init__(self, config: dict[str, Any], topic: str, group_id: str | None = None,
                 from_beginning: bool = True):
        self.topic = topic
        self.results: dict[str, dict[str, Any]] = {}
        self.duplicates = 0
        self.labels: list[str] = []
        self._from_beginning = from_beginning
        self._reader = ResultReader(config=config, topic=topic, group_id=group_id,
                                    from_beginning=from_beginning, commit_interval=None)

    @property
    def messages(self) -> int:
        """Every result message read, duplicates and unreadable ones included."""
        return self._reader.messages

    @property
    def unreadable(self) -> int:
        return self._reader.unreadable

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
            for res in self._reader.poll(0.2):
                if res.id in self.results:
                    self.duplicates += 1
                    continue
                self.results[res.id] = res.to_dict()
                for lab in res.probs:
                    if lab not in self.labels:
                        self.labels.append(lab)
                new += 1
                last_new = time.monotonic()
                if on_new is not None:
                    on_new(1)
        return new

    def backlog(self) -> int | None:
        """About how many messages the topic holds past where this collector starts (from
        the partitions' watermarks), for a progress bar; None when unknown."""
        if not self._from_beginning or self._reader.group_id is not None:
            return None
        consumer = self._reader.consumer
        total = 0
        try:
            for tp in consumer.assignment():
                low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition),
                                                           timeout=5)
                total += max(0, high - low)
        except KafkaException:
            return None
        return total

    def commit(self) -> None:
        """Commit what was read (with a group id; without one there is nothing to commit)."""
        self._reader.commit()

    def close(self) -> None:
        self._reader.close(commit=False)


def run(s: CollectSettings) -> int:
    """`mgeo collect`: --out is checked before the topic is read."""
    try:
        check_output(s.out)
    except InputError as exc:
        print(f"mgeo collect: {exc}", file=sys.stderr)
        return 2
    try:
        collector = Collector(s.client_config("consumer"), s.output_topic, s.collect_group_id,
                              s.from_beginning)
    except (KafkaUnavailable, KafkaException, ValueError) as exc:
        print(f"mgeo collect: {_reason(exc)}", file=sys.stderr)
        return 2
    show = s.progress and sys.stderr.isatty()
    total = s.expect if s.expect is not None else (collector.backlog() if show else None)
    bar = tqdm(total=total, desc="collected", unit=" results", disable=not show)
    try:
        collector.collect(s.expect, s.timeout, on_new=bar.update)
    except KeyboardInterrupt:
        print("mgeo collect: interrupted; writing what was collected", file=sys.stderr)
    except KafkaException as exc:
        bar.close()
        collector.close()
        print(f"mgeo collect: {_reason(exc)}; nothing written", file=sys.stderr)
        return 1
    finally:
        bar.close()
    try:
        n = write_results(s.out, collector.results.values(), collector.labels)
    except InputError as exc:
        print(f"mgeo collect: {exc}; nothing committed, the results stay on the topic",
              file=sys.stderr)
        collector.close()
        return 1
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "str"):
        return f"Kafka error: {exc.args[0].str()}"
    return str(exc)
