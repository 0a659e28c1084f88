"""Publishing address pairs: a small API for ETL code and the `mgeo produce` command.

Runs without torch. Messages are keyed by id (so one id always lands on one partition), sent by
an idempotent producer, and every delivery is confirmed: a report says how many were delivered
and why any were not.

    from mgeo.producer.publish import publish_pairs
    report = publish_pairs([("a1", "北京市朝阳区建国路88号", "朝阳区建国路88号")],
                           bootstrap_servers="kafka:9092")
    assert report.ok
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from confluent_kafka import KafkaException, Producer
from tqdm import tqdm

from mgeo import wire
from mgeo.files import InputError, count_rows, read_rows
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
        self._on_delivered = None

    def _delivery(self, err, msg) -> None:
        if err is None:
            self.report.delivered += 1
            self.report.offsets[msg.partition()] = max(
                msg.offset(), self.report.offsets.get(msg.partition(), -1))
        else:
            self.report.failed += 1
            self.report.note(f"id {msg.key()!r}: {err.str()}")
        if self._on_delivered is not None:
            self._on_delivered()

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

    def send_pair(self, pair: Pair) -> bool:
        """Send one pair given as a mapping (id, addr1, addr2, meta) or a tuple."""
        if isinstance(pair, tuple):
            obj = dict(zip(("id", "addr1", "addr2", "meta"), pair))
        else:
            obj = dict(pair)
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            rid = obj["id"] = str(rid)
        if not isinstance(rid, str) or not rid.strip():
            self.report.skipped += 1
            self.report.note(f"a pair without a usable id was not sent: {str(obj)[:80]}")
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


def publish_pairs(pairs: Iterable[Pair], bootstrap_servers: str = "127.0.0.1:9092",
                  topic: str = "address-pairs", config: Mapping[str, Any] | None = None,
                  flush_timeout: float = 60.0) -> PublishReport:
    """Publish pairs and wait until each is delivered or has failed."""
    conf = {"bootstrap.servers": bootstrap_servers, "enable.idempotence": True,
            "linger.ms": 10, **(config or {})}  # librdkafka's logs: rate-limited by Publisher
    pub = Publisher(conf, topic)
    for pair in pairs:
        pub.send_pair(pair)
    return pub.close(flush_timeout)


def run(s: ProduceSettings) -> int:
    """`mgeo produce FILE|-`."""
    try:
        conf = producer_config(s)
        # One clear line now, rather than a minute of retries, when nothing can be sent.
        partitions_of(conf, s.input_topic)
        pub = Publisher(conf, s.input_topic)
    except KafkaUnavailable as exc:
        print(f"mgeo produce: {exc}", file=sys.stderr)
        return 2
    except KafkaException as exc:
        print(f"mgeo produce: Kafka error: {exc.args[0].str()}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"mgeo produce: {exc}", file=sys.stderr)
        return 2
    show = s.progress and sys.stderr.isatty()
    try:
        total = count_rows(s.input, s.format) if show else None
    except InputError:
        total = None  # read_rows below says what is wrong
    bar = tqdm(total=total, desc="published", unit=" pairs", disable=not show)
    pub._on_delivered = lambda: bar.update(1)
    try:
        for row in read_rows(s.input, s.format):
            if row.obj is None:
                pub.report.skipped += 1
                pub.report.note(f"line {row.line}: {row.problem}")
                continue
            if not pub.send_pair(row.obj):
                pub.report.errors[-1] = f"line {row.line}: no usable id"
    except InputError as exc:
        print(f"mgeo produce: {exc}", file=sys.stderr)
        pub.flush()
        return 2
    except KeyboardInterrupt:
        print("mgeo produce: interrupted; waiting for what was sent", file=sys.stderr)
    report = pub.flush()
    bar.close()
    for msg in report.errors[:5]:
        print(f"mgeo produce: {msg}", file=sys.stderr)
    if len(report.errors) > 5:
        print(f"mgeo produce: ... and {len(report.errors) - 5} more like these",
              file=sys.stderr)
    print(f"mgeo produce: {report.delivered} delivered, {report.failed} failed, "
          f"{report.skipped} skipped (topic {s.input_topic})", file=sys.stderr)
    return 0 if report.ok else 1
