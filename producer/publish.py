"""Publishing address pairs: a small API for ETL code and the `mgeo produce` command.

Runs without torch. Messages are keyed by id (so one id always lands on one partition), sent by
an idempotent producer, and every delivery is confirmed: a report says how many were delivered
and why any were not.

    from mgeo.producer.publish import publish_pairs
    report = publish_pairs([("a1", "北京市朝阳区建国路88号", "朝阳区建国路88号")],
                           bootstrap_servers="kafka:9092")
    assert report.ok
    report = publish_pairs("导出.csv", bootstrap_servers="kafka:9092")  # GBK, Chinese headers...

A file (`mgeo.readers`: CSV, TSV, JSONL, Excel; UTF-8 or GB18030/GBK) is checked whole before
the first message goes out, so a bad byte anywhere publishes nothing. A read that fails after
rows went out (stdin, a damaged workbook) says how many were published and the line to resume
from (`start_line`, `--start-line`).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from confluent_kafka import KafkaException, Producer
from tqdm import tqdm

from mgeo import wire
from mgeo.readers import InputError, PairReader
from mgeo.kafka import KafkaUnavailable, client_logging, partitions_of
from mgeo.settings import ProduceSettings

log = logging.getLogger("mgeo.produce")

Pair = Mapping[str, Any] | tuple


@dataclass
class PublishReport:
    sent: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for people to read
    offsets: dict[int, int] = field(default_factory=dict)  # partition -> last delivered offset

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.skipped == 0 and self.delivered == self.sent

    def note(self, msg: str) -> None:
        if len(self.errors) < 20:
            self.errors.append(msg)


def producer_config(settings: ProduceSettings) -> dict[str, Any]:
    conf: dict[str, Any] = {"enable.idempotence": True, "linger.ms": 10}
    conf.update(settings.client_config("producer"))
    return conf


class Publisher:
    """Sends request messages and tracks each delivery. librdkafka's own log lines and client
    errors are rate-limited (`mgeo.kafka.client_logging`) unless `config` sets its own."""

    def __init__(self, config: Mapping[str, Any], topic: str):
        self.topic = topic
        self.report = PublishReport()
        self._producer = Producer({**client_logging("mgeo.produce"), **config})
        self.on_delivered = None  # called after each delivery report (a progress bar)

    def _delivery(self, err, msg) -> None:
        if err is None:
            self.report.delivered += 1
            self.report.offsets[msg.partition()] = max(
                msg.offset(), self.report.offsets.get(msg.partition(), -1))
        else:
            self.report.failed += 1
            self.report.note(f"id {msg.key()!r}: {err.str()}")
        if self.on_delivered is not None:
            self.on_delivered()

    def send(self, id: str, value: bytes, key: bytes | None = None,
             headers: list | None = None) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value,
                                       key=key if key is not None else id.encode(),
                                       headers=headers, on_delivery=self._delivery)
                break
            except BufferError:  # local queue full: serve deliveries, then try again
                self._producer.poll(0.5)
        self.report.sent += 1
        self._producer.poll(0)

    def send_pair(self, pair: Pair, where: str | None = None) -> bool:
        """Send one pair given as a mapping (id, addr1, addr2, meta) or a tuple; `where` names
        it in the report (e.g. "line 7") when it cannot be sent."""
        if isinstance(pair, tuple):
            obj = dict(zip(("id", "addr1", "addr2", "meta"), pair))
        else:
            obj = dict(pair)
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = obj["id"] = str(rid)
        if not isinstance(rid, str) or not rid.strip():
            self.report.skipped += 1
            self.report.note(f"{where}: no usable id" if where else
                             f"a pair without a usable id was not sent: {str(obj)[:80]}")
            return False
        self.send(rid, wire.encode_request(rid, obj.get("addr1"), obj.get("addr2"),
                                           obj.get("meta")))
        return True

    def flush(self, timeout: float = 60.0) -> PublishReport:
        left = self._producer.flush(timeout)
        if left:
            self.report.failed += left
            self.report.note(f"{left} messages still undelivered after {timeout:.0f}s; is the "
                             "broker reachable and the topic there?")
        return self.report

    def close(self, timeout: float = 60.0) -> PublishReport:
        """Flush, then release the client (its connections close now, not at GC time)."""
        report = self.flush(timeout)
        self._producer = None
        return report


class ReadFailed(InputError):
    """A file stopped being readable after some of its rows were published; the message says
    how many and the line to resume from (`line`)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while publishing a file: the message says how many rows went out and the line
    to resume from."""


def publish_rows(pub: Publisher, reader: PairReader, start_line: int = 1) -> int:
    """Send the rows of `reader` from line `start_line` on; returns the line of the last row
    read. A row that cannot be read is skipped and named in the report. When the file stops
    being readable, or on Ctrl-C, what was sent is flushed and `ReadFailed` or `Interrupted`
    says how much went out and where to resume."""
    last = start_line - 1
    try:
        for row in reader:
            if row.line < start_line:
                continue
            last = row.line
            if row.obj is None:
                pub.report.skipped += 1
                pub.report.note(f"line {row.line}: {row.problem}")
            else:
                pub.send_pair(row.obj, f"line {row.line}")
    except InputError as exc:
        report = pub.flush()
        line = exc.resume if exc.resume is not None else last + 1
        raise ReadFailed(f"{exc}; {report.delivered} rows before line {line} were published "
                         f"({report.failed} failed): fix the file and publish the rest with "
                         f"--start-line {line} (start_line={line})", line) from None
    except KeyboardInterrupt:
        report = pub.flush()
        raise Interrupted(f"interrupted after line {last}: {report.delivered} rows published "
                          f"({report.failed} failed); publish the rest with --start-line "
                          f"{last + 1}") from None
    return last


def publish_pairs(pairs: Iterable[Pair] | str | os.PathLike,
                  bootstrap_servers: str = "127.0.0.1:9092", topic: str = "address-pairs",
                  config: Mapping[str, Any] | None = None, flush_timeout: float = 60.0, *,
                  format: str = "auto", encoding: str = "auto",
                  columns: str | Mapping[str, str] | None = None, id_from_row: bool = False,
                  start_line: int = 1) -> PublishReport:
    """Publish pairs (an iterable, or the path of a file of them) and wait until each is
    delivered or has failed.

    A file is read by `mgeo.readers.PairReader` with `format`, `encoding`, `columns` and
    `id_from_row`, and checked whole first: a mistake raises `InputError` (a ValueError)
    naming the file and line, with nothing published. Rows before `start_line` are skipped."""
    conf = {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
            "linger.ms": 10, **(config or {})}  # librdkafka's logs: rate-limited by Publisher
    if isinstance(pairs, (str, os.PathLike)):
        with PairReader(pairs, format, encoding, columns, id_from_row) as reader:
            reader.count()
            pub = Publisher(conf, topic)
            publish_rows(pub, reader, start_line)
            return pub.close(flush_timeout)
    pub = Publisher(conf, topic)
    for pair in pairs:
        pub.send_pair(pair)
    return pub.close(flush_timeout)


def run(s: ProduceSettings) -> int:
    """`mgeo produce FILE|-`: the input is checked (path, format, header and, for a file,
    every byte) before Kafka is asked anything."""
    try:
        reader = PairReader(s.input, s.format, s.encoding, s.columns, s.id_from_row)
    except InputError as exc:
        return _say(f"{exc}", 2)
    with reader:
        try:
            total = reader.count()
        except InputError as exc:
            return _say(f"{exc}; nothing published", 2)
        try:
            conf = producer_config(s)
            # One clear line now, rather than a minute of retries, when nothing can be sent.
            partitions_of(conf, s.input_topic)
            pub = Publisher(conf, s.input_topic)
        except KafkaException as exc:
            return _say(f"Kafka error: {exc.args[0].str()}", 2)
        except (KafkaUnavailable, ValueError) as exc:
            return _say(f"{exc}", 2)
        show = s.progress and sys.stderr.isatty()
        bar = tqdm(total=total if s.start_line == 1 else None, desc="published",
                   unit=" pairs", disable=not show)
        pub.on_delivered = lambda: bar.update(1)
        try:
            publish_rows(pub, reader, s.start_line)
        except ReadFailed as exc:
            bar.close()
            return _say(f"{exc}", 2)
        except Interrupted as exc:
            bar.close()
            return _say(f"{exc}", 130)
        report = pub.flush()
        bar.close()
    for msg in report.errors[:5]:
        _say(msg, 0)
    if len(report.errors) > 5:
        _say(f"... and {len(report.errors) - 5} more like these", 0)
    ids = "; ids are row numbers (row-N: line N)" if s.id_from_row else ""
    _say(f"{report.delivered} delivered, {report.failed} failed, {report.skipped} skipped "
         f"(topic {s.input_topic}; {reader.shown} read as {reader.describe()}{ids})", 0)
    return 0 if report.ok else 1


def _say(line: str, code: int) -> int:
    print(f"mgeo produce: {line}", file=sys.stderr)
    return code
