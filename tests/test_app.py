"""worker/app.py owns every lifecycle: the engine is closed on every way out of a worker (a
stop, a failure, an unexpected error, a constructor that fails), on the in-memory broker."""

from __future__ import annotations

import socket
import threading

import pytest

from engines import RuleEngine
from memory_kafka import MemoryBroker, clients
from mgeo import wire
from mgeo.settings import WorkerSettings
from mgeo.worker.app import Worker

WAIT = 30  # seconds: a bound on event waits


class ClosingEngine(RuleEngine):
    """A rule engine that counts its closes, with the engine's observer and stats calls."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.closes = 0

    def close(self) -> None:
        self.closes += 1

    def add_observer(self, observer) -> None:
        pass

    def stats(self) -> dict:
        return {}


def _settings(**kw) -> WorkerSettings:
    return WorkerSettings(input_topic="in", output_topic="out", dlq_topic="dlq", group_id="g",
                          stats_interval_ms=0, commit_interval=0.05, poll_timeout=0.05, **kw)


def _broker() -> MemoryBroker:
    broker = MemoryBroker()
    for topic, n in (("in", 1), ("out", 1), ("dlq", 1)):
        broker.create(topic, n)
    return broker


def _run(worker: Worker) -> tuple[threading.Thread, list[int]]:
    rc: list[int] = []
    t = threading.Thread(target=lambda: rc.append(worker.run()), daemon=True)
    t.start()
    return t, rc


def test_a_stopped_worker_closes_its_engine_once():
    engine, broker = ClosingEngine(), _broker()
    factories, made = clients(broker)
    worker = Worker(_settings(), engine, clients=factories)
    t, rc = _run(worker)
    with worker.processor.progress:
        assert worker.processor.progress.wait_for(lambda: "consumer" in made, WAIT)
    made["consumer"].rebalance("assign", [("in", 0)]).wait(WAIT)
    worker.stop()
    t.join(WAIT)
    assert rc == [0] and worker.closed and engine.closes == 1
    worker.close()  # again: nothing more
    assert engine.closes == 1


def test_a_worker_stopped_by_a_failure_closes_its_engine():
    engine, broker = ClosingEngine(broken=True), _broker()
    factories, made = clients(broker)
    broker.append("in", 0, b"r1", wire.encode_request("r1", "甲", "乙"))
    worker = Worker(_settings(), engine, clients=factories)
    t, rc = _run(worker)
    with worker.processor.progress:
        assert worker.processor.progress.wait_for(lambda: "consumer" in made, WAIT)
    made["consumer"].rebalance("assign", [("in", 0)]).wait(WAIT)
    t.join(WAIT)
    assert rc == [1] and engine.closes == 1


def test_an_unexpected_error_in_the_loop_closes_the_engine():
    engine = ClosingEngine()
    factories, _ = clients(_broker())
    worker = Worker(_settings(), engine, clients=factories)

    def boom() -> int:
        raise ValueError("unexpected")

    worker.processor.run = boom
    assert worker.run() == 1 and engine.closes == 1


def test_clients_that_cannot_start_close_the_engine():
    engine = ClosingEngine()

    def refuse(conf):
        raise RuntimeError("no client")

    from mgeo.worker.stream.clients import Clients

    worker = Worker(_settings(), engine, clients=Clients(consumer=refuse, producer=refuse))
    assert worker.run() == 1 and engine.closes == 1


def test_a_worker_that_cannot_be_built_closes_the_engine_it_was_given():
    engine = ClosingEngine()
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError):
            Worker(_settings(metrics_port=taken.getsockname()[1], metrics_host="127.0.0.1"),
                   engine, clients=clients(_broker())[0])
    finally:
        taken.close()
    assert engine.closes == 1
