"""What the stream reports: counters anyone may read, and events an observer (the metrics)
receives as they happen. Nothing here reaches into another component."""

from __future__ import annotations

import threading
import time
from typing import Callable, Protocol, Sequence


class Observer(Protocol):
    """Events of the stream part; every method is called from the thread named."""

    def scored(self, pairs: int, seconds: float) -> None:
        """(inference thread) One inference call: its pairs and wall seconds."""

    def published(self, timestamps_ms: Sequence[int], now: float) -> None:
        """(inference thread) Answers produced at unix time `now` for requests with these
        Kafka timestamps; an answer's record carries that produce time."""

    def librdkafka_stats(self, raw: str) -> None:
        """(Kafka loop) librdkafka's statistics JSON."""


class Stats:
    """Counters the metrics endpoint and the tests read.

    Outcomes count what is final: at-least-once when the broker confirmed the answer,
    exactly-once when its transaction committed. Each counter has one writer thread.
    """

    def __init__(self) -> None:
        self.consumed = 0          # messages read (Kafka loop)
        self.dropped = 0           # read for a partition no longer ours: not answered here
        self.scored = 0            # results delivered / committed
        self.error_results = 0     # error results delivered / committed
        self.dead_letters = 0      # dead letters delivered / committed
        self.answered = 0          # all three
        self.delivery_retries = 0  # answers re-sent after a transient failure
        self.substituted = 0       # answers replaced after a permanent failure (stub, error)
        self.commits = 0           # offset commits (exactly-once: committed transactions)
        self.aborts = 0            # aborted transactions (exactly-once)
        self.assignments = 0
        self.revocations = 0
        self.losses = 0
        self.batches = 0           # inference calls
        self.inference_seconds = 0.0
        self.last_tick = time.monotonic()
        self.last_tick_unix = time.time()
        self.ready = False
        self.assigned: list[tuple[str, int]] = []
        # Partitions held with messages to read and not read for --liveness-timeout seconds,
        # though not paused (see liveness.ReadWatch): how far behind each is, by the broker,
        # and what /healthz says about them.
        self.stalled: dict[tuple[str, int], int] = {}
        self.stall_reason: str | None = None


class Control:
    """Stopping, failing and waiting, shared by the loop and the threads it starts.

    `progress` is notified whenever work moves (a batch taken or published, an answer
    settled, a partition released) or the worker is asked to stop, so every wait is woken by
    what it waits for. `hurry` is the second signal: no wait anywhere lasts past it.
    """

    def __init__(self) -> None:
        self.progress = threading.Condition()
        self.stopping = threading.Event()
        self.hurrying = threading.Event()
        self.failure: BaseException | None = None

    def stop(self) -> None:
        self.stopping.set()
        self.notify()

    def hurry(self) -> None:
        self.hurrying.set()
        self.stop()

    def fail(self, exc: BaseException) -> None:
        """Stop on a failure; the first one is kept."""
        if self.failure is None:
            self.failure = exc
        self.stop()

    def notify(self) -> None:
        with self.progress:
            self.progress.notify_all()

    def wait(self, done: Callable[[], bool], deadline: float) -> bool:
        """Wait until `done()`; False when `deadline` (time.monotonic) passed, a second
        signal came or something failed first."""
        with self.progress:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0 or self.hurrying.is_set() or self.failure is not None:
                    return False
                self.progress.wait(min(left, 1.0))
        return True
