"""The two brokers a loop test runs on, behind one interface (as Arroyo's backend test mixins
do): the in-memory one (tests/memory_kafka.py, a group of one: every partition assigned at
subscribe) by default, the embedded real broker (conftest's Tansu fixtures) for the same test
bodies. A test asks its `backend` fixture for settings, a processor, what to publish and what
came out; it never knows which broker it runs on."""

from __future__ import annotations

import threading
import time

import orjson
from confluent_kafka import KafkaError, Producer

from memory_kafka import MemoryBroker, clients
from mgeo import wire
from mgeo.settings import WorkerSettings
from mgeo.worker.stream.processor import StreamProcessor
from mgeo.worker.stream.scoring import Scorer

PARTITIONS = {"input": 4, "output": 4, "dlq": 1}


class Backend:
    name = ""
    hides_aborted = True  # a read_committed reader skips aborted transactions

    def __init__(self, topics: dict[str, str]):
        self.topics = topics

    def settings(self, **kw) -> WorkerSettings:
        t = self.topics
        return WorkerSettings(**{"input_topic": t["input"], "output_topic": t["output"],
                                 "dlq_topic": t["dlq"], "group_id": t["group"],
                                 "commit_interval": 0.2, **self.extra, **kw})

    def start(self, proc: StreamProcessor) -> tuple[threading.Thread, list[int]]:
        rc: list[int] = []
        t = threading.Thread(target=lambda: rc.append(proc.run()), daemon=True)
        t.start()
        return t, rc

    def publish(self, reqs) -> None:
        """(id, address 1, address 2) requests, keyed by id."""
        self.publish_values([(rid.encode(), wire.encode_request(rid, a, b))
                             for rid, a, b in reqs])


class MemoryBackend(Backend):
    name = "memory"
    extra = {"poll_timeout": 0.05, "stats_interval_ms": 0}

    def __init__(self):
        super().__init__({"input": "in", "output": "out", "dlq": "dlq", "group": "g"})
        self.broker = MemoryBroker()
        for key, n in PARTITIONS.items():
            self.broker.create(self.topics[key], n)
        self._next = 0

    def processor(self, settings: WorkerSettings, engine) -> StreamProcessor:
        factories, _ = clients(self.broker, group=True)
        return StreamProcessor(settings, Scorer(engine), clients=factories)

    def publish_values(self, records) -> None:
        """(key, value) records; keyless ones round-robin."""
        import zlib

        n = PARTITIONS["input"]
        for key, value in records:
            if key is None:
                p, self._next = self._next % n, self._next + 1
            else:
                p = zlib.crc32(key) % n
            self.broker.append(self.topics["input"], p, key, value)

    def results(self, n: int, timeout: float = 60) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        with self.broker.cond:
            while True:
                got = {r["id"]: r for r in map(orjson.loads, self._values("output"))}
                if len(got) >= n or time.monotonic() >= deadline:
                    return got
                self.broker.cond.wait(min(1.0, deadline - time.monotonic()))

    def _values(self, key: str) -> list[bytes]:
        return [m.value() for m in self.broker.visible(self.topics[key])]

    def every_record(self, key: str, expect: int) -> list:
        """Every record of a topic, aborted transactions' too (read_uncommitted)."""
        with self.broker.cond:
            return [m for (t, _), log in sorted(self.broker.logs.items())
                    if t == self.topics[key] for m in log]

    def read_committed(self, key: str, expect: int) -> list:
        """What a read_committed consumer reads (the broker filters aborted transactions)."""
        return self.broker.visible(self.topics[key])

    def committed_keys(self, key: str) -> list[bytes]:
        """The keys a read_committed reader gets by the log's transaction markers."""
        return [m.key() for m in self.broker.visible(self.topics[key])]

    def committed_values(self, key: str) -> list[bytes]:
        return self._values(key)

    def committed_total(self) -> int:
        return sum(off for (t, _), off in self.broker.committed.items()
                   if t == self.topics["input"])

    def unwritable(self) -> str:
        """A results topic that refuses every answer, transiently (retried for ever)."""
        self.broker.create("unwritable", PARTITIONS["output"])
        self.broker.refuse_topics["unwritable"] = KafkaError(
            KafkaError.UNKNOWN_TOPIC_OR_PART, "no such topic")
        return "unwritable"


class KafkaBackend(Backend):
    name = "kafka"

    def __init__(self, bootstrap: str, topics: dict[str, str], hides_aborted: bool):
        super().__init__(topics)
        self.bootstrap, self.hides_aborted = bootstrap, hides_aborted
        self.extra = {"bootstrap_servers": bootstrap, "session_timeout_ms": 6000}

    def processor(self, settings: WorkerSettings, engine) -> StreamProcessor:
        return StreamProcessor(settings, Scorer(engine))

    def publish_values(self, records) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap})
        for key, value in records:
            p.produce(self.topics["input"], key=key, value=value)
        assert p.flush(30) == 0

    def results(self, n: int, timeout: float = 60) -> dict[str, dict]:
        from mgeo.producer.collect import Collector

        out = Collector({"bootstrap.servers": self.bootstrap}, self.topics["output"])
        try:
            out.collect(n, timeout=timeout)
        finally:
            out.close()
        return out.results

    def every_record(self, key: str, expect: int) -> list:
        from conftest import read_messages

        return read_messages(self.bootstrap, {self.topics[key]: PARTITIONS[key]}, expect,
                             "read_uncommitted")

    def read_committed(self, key: str, expect: int) -> list:
        from conftest import read_messages

        return read_messages(self.bootstrap, {self.topics[key]: PARTITIONS[key]}, expect)

    def committed_keys(self, key: str) -> list[bytes]:
        from kafka_log import read_committed_log

        return [r.key for r in read_committed_log(self.bootstrap, self.topics[key],
                                                  PARTITIONS[key])]

    def committed_values(self, key: str) -> list[bytes]:
        from kafka_log import read_committed_log

        return [r.value for r in read_committed_log(self.bootstrap, self.topics[key],
                                                    PARTITIONS[key])]

    def committed_total(self) -> int:
        from conftest import committed_offsets

        return sum(committed_offsets(self.bootstrap, self.topics["group"],
                                     self.topics["input"]).values())

    def unwritable(self) -> str:
        """A results topic that refuses every answer: the broker refuses its name."""
        return "no/such topic"
