"""Running real workers against the embedded broker, for benchmarks: topics, a worker process
whose start is an event (its "assigned" log line), pre-filled and paced request streams, and the
record timestamps of the answers."""

from __future__ import annotations

import bisect
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from mgeo import wire
from mgeo.kafka import create_topics


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, bootstrap: str, partitions: int, tag: str = "bench") -> "Topics":
        t = f"{tag}-{uuid.uuid4().hex[:8]}"
        topics = cls(f"{t}-pairs", f"{t}-scores", f"{t}-dlq", f"{t}-workers")
        create_topics({"bootstrap.servers": bootstrap},
                      {topics.input: partitions, topics.output: partitions, topics.dlq: 1})
        return topics


class Worker:
    """`mgeo worker` in a subprocess; `wait_assigned` returns once it owns partitions."""

    def __init__(self, bootstrap: str, topics: Topics, model: Path, *, device: str = "cpu",
                 log_path: Path | None = None, argv: Sequence[str] | None = None,
                 env_extra: dict[str, str] | None = None, cwd: Path | None = None,
                 **settings: str):
        env = dict(os.environ)
        env.update({"MGEO_BOOTSTRAP_SERVERS": bootstrap, "MGEO_INPUT_TOPIC": topics.input,
                    "MGEO_OUTPUT_TOPIC": topics.output, "MGEO_DLQ_TOPIC": topics.dlq,
                    "MGEO_GROUP_ID": topics.group, "MGEO_MODEL": str(model),
                    "MGEO_DEVICE": device, "MGEO_SESSION_TIMEOUT_MS": "6000",
                    "MGEO_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1",
                    "MGEO_LOG_LEVEL": "info"})  # its join is read from its log
        env.update({f"MGEO_{k.upper()}": str(v) for k, v in settings.items()})
        env.update(env_extra or {})
        self.lines: list[str] = []
        self._assigned = threading.Event()
        self._log = open(log_path, "w", encoding="utf-8") if log_path else None
        argv = list(argv or [sys.executable, "-m", "mgeo.tools.cli", "worker"])
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self._log:
                self._log.write(line)
            if re.search(r"assigned [1-9]\d* partitions", line):
                self._assigned.set()
        self._assigned.set()

    def wait_assigned(self, timeout: float = 120.0) -> None:
        if not self._assigned.wait(timeout) or self.proc.poll() is not None:
            raise RuntimeError("the worker did not join its group:\n" + "\n".join(self.lines[-30:]))

    def stop(self, timeout: float = 60.0) -> int:
        code = terminate(self.proc, timeout)
        self._reader.join(5)
        if self._log:
            self._log.close()
        return code


def terminate(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM (unless it has exited), then its exit code; killed if it is still there after
    `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def _producer(bootstrap: str, linger_ms: float = 5):
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms,
                     "queue.buffering.max.messages": 1_000_000, "enable.idempotence": False})


def prefill(bootstrap: str, topic: str, pairs: Sequence[tuple[str, str]],
            prefix: str = "r") -> None:
    """Publish every pair, as fast as the client goes; returns once all are delivered."""
    p = _producer(bootstrap, linger_ms=20)
    for i, (a, b) in enumerate(pairs):
        rid = f"{prefix}{i}"
        while True:
            try:
                p.produce(topic, key=rid.encode(), value=wire.encode_request(rid, a, b))
                break
            except BufferError:
                p.poll(0.05)
        if i % 10_000 == 0:
            p.poll(0)
    if p.flush(120):
        raise RuntimeError("could not pre-fill the input topic")


def paced(bootstrap: str, topic: str, pairs: Sequence[tuple[str, str]], rate: float,
          prefix: str) -> dict[str, int]:
    """Publish the pairs at `rate` a second, evenly, as an online client does: one request at a
    time, linger.ms 1, its producer served every ~2 ms between sends (bench/latency_client.py
    sends so; a batch-style producer, 5 ms linger and sleeping between sends, costs the shared
    CPU less and measured a lower p99 than such a client sees). Returns each id's request
    timestamp (ms, as its record carries it)."""
    p = _producer(bootstrap, linger_ms=1)
    sent: dict[str, int] = {}

    def delivered(err, msg):
        if err is None:
            sent[msg.key().decode()] = msg.timestamp()[1]

    start = time.monotonic()
    for i, (a, b) in enumerate(pairs):
        due = start + i / rate
        while (left := due - time.monotonic()) > 0:  # the schedule is the point
            p.poll(min(left, 0.002))
        rid = f"{prefix}{i}"
        p.produce(topic, key=rid.encode(), value=wire.encode_request(rid, a, b),
                  on_delivery=delivered)
    p.flush(60)
    return sent


class Answers:
    """Reads the results topic from the start: each answer's key and record timestamp.

    What is measured is the answers' record timestamps, not when they are read, so this
    reader fetches lazily (librdkafka's default fetch wait): on the 2-core CI machine an eager
    one (10 ms) kept the broker busy enough to cost the worker under test a third of its rate.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        self.consumer = Consumer({"bootstrap.servers": bootstrap,
                                  "group.id": f"bench-{uuid.uuid4().hex[:8]}",
                                  "enable.auto.commit": False, "fetch.wait.max.ms": 500,
                                  "isolation.level": "read_committed"})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                              for p in range(partitions)])
        self.stamps: dict[bytes, int] = {}

    def read(self, expect: int, timeout: float) -> dict[bytes, int]:
        """Until `expect` distinct keys (or `timeout` seconds without a new one)."""
        last = time.monotonic()
        while len(self.stamps) < expect and time.monotonic() - last < timeout:
            for m in self.consumer.consume(5000, 0.2):
                if m.error() is None and m.key() not in self.stamps:
                    self.stamps[m.key()] = m.timestamp()[1]
                    last = time.monotonic()
        return self.stamps

    def close(self) -> None:
        self.consumer.close()


def steady_rate(stamps_ms: Sequence[int], warmup: float = 0.1,
                since_ms: float | None = None) -> float:
    """Answers a second over the run, from the answers' own record timestamps: those answered
    after the first `warmup` share (start-up, the first batches) over the time since then.

    A worker answers a batch at once, many answers to one millisecond: only the answers after
    that moment count. A backlog the worker takes in one or two batches has no steady part (on
    a busy 2-core machine 1,000 pairs came back within 50 ms, 4 s after they were written, and
    measured as 18,000 a second): where the steady part is less than half of the drain timed
    from `since_ms` (when the worker could start: assigned, the backlog written), the rate is
    the whole drain's. NaN when neither can be timed."""
    ts = sorted(stamps_ms)
    if not ts:
        return math.nan
    start = ts[int(len(ts) * warmup)]
    after = len(ts) - bisect.bisect_right(ts, start)
    span = (ts[-1] - start) / 1000
    steady = after / span if span > 0 and after >= len(ts) // 2 else math.nan
    if since_ms is not None and ts[-1] > since_ms:
        drain = (ts[-1] - since_ms) / 1000
        if math.isnan(steady) or span < drain / 2:
            return len(ts) / drain
    return steady
