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

    def joined(self, tps) -> None:
        """(Kafka loop) An assignment (maybe empty): the worker is in the group."""
        self.assignments += 1
        self.ready = True
        self.assigned = sorted(set(self.assigned) | set(tps))

    def left(self, tps) -> None:
        """(Kafka loop) These partitions are no longer held."""
        self.assigned = [tp for tp in self.assigned if tp not in tps]

    def ticked(self, now: float) -> None:
        """(Kafka loop) A tick ended at time.monotonic `now`: the loop is alive."""
        self.last_tick = now
        self.last_tick_unix = time.time()


class Control:
    """Stopping, failing and the Kafka loop's waits, shared by the loop and its steps.

    `progress` is the Kafka loop's own condition: the steps call `notify` when work moves (a
    batch taken or published, an answer settled, a transaction committed) and the loop when
    a partition is released or the worker is asked to stop; each step waits on conditions of
    its own. `hurry` is the second signal: no wait anywhere lasts past it. `deadline` is set
    when stopping: it bounds the whole drain, transactional calls included.
    """

    def __init__(self) -> None:
        self.progress = threading.Condition()
        self.stopping = threading.Event()
        self.hurrying = threading.Event()
        self.failure: BaseException | None = None
        self.deadline: float | None = None

    def bounded(self, seconds: float) -> float:
        """The time.monotonic `seconds` from now, or the drain's deadline if sooner."""
        limit = time.monotonic() + seconds
        return min(limit, self.deadline) if self.deadline else limit

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
