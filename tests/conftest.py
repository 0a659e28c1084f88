"""Shared fixtures: a real Kafka-compatible broker, fresh topics, small models, worker processes.

By default the tests start the embedded broker (Tansu) on loopback once per session. With
MGEO_TEST_BOOTSTRAP=host:port they run against that Kafka instead (e.g. the compose one).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tansu joins a group in about session.timeout.ms / 2: short sessions keep tests quick.
ASSIGNED = r"assigned [1-9]\d* partitions"  # a non-empty assignment (the first may be empty)
FAST_GROUP = {"MGEO_SESSION_TIMEOUT_MS": "6000"}


@pytest.fixture(scope="session")
def bootstrap():
    external = os.environ.get("MGEO_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    from mgeo.tools.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap


def http_get(port: int, path: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body) of GET http://127.0.0.1:port/path; (0, why) when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int = 4, *,
                      expect: dict[int, int] | None = None, timeout: float = 30.0
                      ) -> dict[int, int]:
    """The group's committed offset of each partition of `topic` that has one. With `expect`,
    read again (for at most `timeout` seconds) until they are that: the embedded broker can
    show a transaction's offsets a little after its answers (seen once under load on two cores,
    the worker already gone: every answer read, one partition's offset one transaction behind).
    A worker that has exited commits nothing later, so a re-read tells the broker's delay from
    a commit that never happened."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    deadline = time.monotonic() + timeout
    try:
        while True:
            got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
            found = {tp.partition: tp.offset for tp in got if tp.offset >= 0}
            if expect is None or found == expect or time.monotonic() > deadline:
                return found
            time.sleep(0.2)  # a re-read, bounded by `timeout`
    finally:
        c.close()


def read_messages(bootstrap: str, topics: dict[str, int], expect: int,
                  isolation: str = "read_committed") -> list:
    """Every message of `{topic: partitions}` from the start, read until `expect` and a little
    beyond (so duplicates past `expect` show)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "isolation.level": isolation, "enable.auto.commit": False})
    c.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t, n in topics.items()
              for p in range(n)])
    got: list = []
    for _ in range(240):
        got += [m for m in c.consume(2000, 0.5) if m.error() is None]
        if len(got) >= expect:
            break
    for _ in range(2):  # anything beyond `expect` arrives in the same reads
        got += [m for m in c.consume(2000, 0.5) if m.error() is None]
    c.close()
    return got


@pytest.fixture(scope="session")
def broker_hides_aborted(bootstrap) -> bool:
    """Whether the broker keeps aborted transactional records from read_committed readers.

    Kafka does (its fetch responses list the aborted transactions). Tansu 0.6, the embedded
    test broker, does not: it hides open transactions (the last stable offset works) but hands
    aborted records to read_committed readers. Exactly-once tests assert the exact count the
    broker in use can deliver; against a real Kafka (MGEO_TEST_BOOTSTRAP) that is once per id.
    """
    from confluent_kafka import Consumer, Producer, TopicPartition

    from mgeo.kafka import create_topics

    topic = f"txn-probe-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": bootstrap}, {topic: 1})
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(topic, b"aborted")
    p.flush(30)
    p.abort_transaction(30)
    p.begin_transaction()
    p.produce(topic, b"committed")
    p.commit_transaction(30)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": topic,
                  "isolation.level": "read_committed"})
    c.assign([TopicPartition(topic, 0, 0)])
    seen: list[bytes] = []
    for _ in range(40):
        seen += [m.value() for m in c.consume(10, 0.5) if m.error() is None]
        if b"committed" in seen:
            break
    c.close()
    assert b"committed" in seen, f"transaction probe read {seen}"
    return b"aborted" not in seen


def fresh_topics(bootstrap: str, partitions: int = 4) -> dict[str, str]:
    """Fresh input/output/dead-letter topics (`partitions`, `partitions`, 1) and a group name."""
    from mgeo.kafka import create_topics

    tag = uuid.uuid4().hex[:8]
    names = {"input": f"pairs-{tag}", "output": f"scores-{tag}", "dlq": f"dlq-{tag}",
             "group": f"workers-{tag}"}
    create_topics({"bootstrap.servers": bootstrap},
                  {names["input"]: partitions, names["output"]: partitions, names["dlq"]: 1})
    return names


@pytest.fixture()
def topics(bootstrap):
    """Fresh input/output/dead-letter topic names (4, 4, 1 partitions) for one test."""
    return fresh_topics(bootstrap)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer BERT with the Chinese character vocabulary: fast on a CPU, real code paths."""
    from mgeo.tools.models import build_random_model

    return build_random_model(tmp_path_factory.mktemp("tiny-model"), layers=2, hidden=64,
                              heads=2, intermediate=128, seed=0)


def worker_env(bootstrap: str, topics: dict, model: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(FAST_GROUP)
    env.update({"MGEO_BOOTSTRAP_SERVERS": bootstrap, "MGEO_INPUT_TOPIC": topics["input"],
                "MGEO_OUTPUT_TOPIC": topics["output"], "MGEO_DLQ_TOPIC": topics["dlq"],
                "MGEO_GROUP_ID": topics["group"], "MGEO_MODEL": str(model),
                "MGEO_DEVICE": "cpu", "MGEO_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


class WorkerProcess:
    """`mgeo worker` in a subprocess, its log captured; waits are on log events, bounded."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()):
        self.proc = subprocess.Popen([sys.executable, "-m", "mgeo.tools.cli", "worker", *args],
                                     env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 60.0) -> str:
        """Block until a log line matches the regex `pattern`; fail with the log if it never
        comes."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    if re.search(pattern, line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"worker never logged {pattern!r}:\n" + self.log())
                self._cond.wait(min(left, 1.0))

    def log(self) -> str:
        return "\n".join(self.lines[-80:])

    def stop(self, timeout: float = 60.0) -> int:
        from mgeo.tools.harness import terminate

        rc = terminate(self.proc, timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)


@pytest.fixture()
def start_worker():
    started: list[WorkerProcess] = []

    def _start(env: dict[str, str], *args: str) -> WorkerProcess:
        w = WorkerProcess(env, args)
        started.append(w)
        return w

    yield _start
    for w in started:
        if w.proc.poll() is None:
            w.kill()


# The fast lane (`pytest -m "not slow"`) is what runs in minutes while working: a test that asks
# for one of these fixtures (the embedded broker, a worker process, a model trained for the test)
# is in the slow lane whatever its own marks say.
SLOW_FIXTURES = frozenset({"bootstrap", "topics", "start_worker", "broker_hides_aborted",
                           "trained"})


# The longest tests (minutes, see .ci/run's --durations list) start first, so that on several
# processes (pytest -n, as .ci/run runs the slow lane) none of them is left to run alone at the
# end: longest first is the classic schedule for jobs of known length on parallel machines.
LONGEST_FIRST = ("tests/test_gpu_rehearsal.py::", "tests/test_faults.py::test_sigkill",
                 "tests/test_soak.py::", "tests/test_train.py::",
                 "tests/test_worker_only.py::test_bench_host_path",
                 "tests/test_failure_modes.py::test_a_session_that_really_expires",
                 "tests/test_failure_modes.py::test_a_paused_worker_that_loses",
                 "tests/test_docs.py::")


def _rank(item) -> int:
    for k, prefix in enumerate(LONGEST_FIRST):
        if item.nodeid.startswith(prefix):
            return k
    return len(LONGEST_FIRST)


# Tests that share a costly fixture run on one process under pytest -n (xdist), the others one
# by one on whichever process is free. (xdist's own `--dist loadgroup` marks do nothing under
# pytest 9, which moved the node id it rewrites.)
SHARED_FIXTURE_FILES = ("tests/test_train.py",  # the trained model
                        "tests/test_packaging.py")  # the wheel, built in the tree's build/: two
# processes building it at once collide there ("File exists: build/bdist.../wheel/...dist-info")


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Shared(LoadScopeScheduling):
        """Each test its own unit of work, but a file of SHARED_FIXTURE_FILES one unit (that
        goes out first, being largest; then the rest in collection order, longest first)."""

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in SHARED_FIXTURE_FILES else nodeid

    return Shared(config, log)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())) \
                or item.get_closest_marker("broker"):
            item.add_marker(pytest.mark.slow)
    items.sort(key=_rank)  # stable: the rest keep their order
