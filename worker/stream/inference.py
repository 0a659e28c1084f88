"""The inference stage: units in from the Kafka loop, answers out to the delivery strategy.

Threads waiting on queues (no polling, no timers):

    prepare ──▶ score (one a lane) ──▶ publish
    tokenize    the model                encode results, produce them

- prepare takes everything queued now (continuous batching: under light load a batch is what
  has arrived, under heavy load it grows to --max-batch-pairs) as soon as the model can take a
  batch: with a GPU while the previous batch is on the device, on a CPU once a lane is free;
- score runs the model: one thread a lane of the engine, so on a CPU with two lanes a batch that
  arrives while another is scored starts at once on the other lane;
- publish encodes the results and hands each unit to the delivery strategy, which produces its
  answers at once, in the order the batches finish: an answer never waits for the Kafka loop's
  next poll, nor for a slower batch taken before it (offsets are committed per partition only
  up to the first unfinished message, whatever the order).

A unit counts as busy from the moment prepare takes it until its answers are produced; the Kafka
loop waits for that before it gives up a partition. Units still queued for a partition being
given up are dropped (its new owner reads them again).

A worker that leaves without finishing (a second signal, a drain past its deadline, a failure)
abandons the stage: nothing more is taken, prepared or scored, and the batch on the model ends
on its own. Its threads must be over before the engine is closed and the process exits: a
thread inside torch while the interpreter exits aborts the process.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from typing import Callable

from mgeo.worker.stream.events import Observer, Stats
from mgeo.worker.stream.intake import Unit
from mgeo.worker.stream.offsets import TP, OffsetTracker
from mgeo.worker.stream.scoring import Job, Scorer

log = logging.getLogger("mgeo.worker")

_STOP = object()


class InferenceStage:
    def __init__(self, scorer: Scorer, publish: Callable[[Unit], None], *,
                 tracker: OffsetTracker, stats: Stats, max_pairs: int,
                 on_failure: Callable[[BaseException], None], progress: threading.Condition,
                 observer: Observer | None = None, prefetch: bool = False):
        self.scorer, self.publish = scorer, publish
        self.tracker, self.stats, self.max_pairs = tracker, stats, max_pairs
        self.on_failure, self.progress, self.observer = on_failure, progress, observer
        self._queue: deque[Unit] = deque()
        self._queued_pairs = 0
        self._busy: Counter[TP] = Counter()   # partitions of units taken, not yet published
        self._closing = False
        self._abandoned = False
        # Batches in preparation, prepared or on the model at once: one a lane. With a GPU, one
        # more is prepared while the device runs, so it never waits for the CPU; on a CPU the
        # model and the preparing share the cores, so a batch is taken only when a lane is free:
        # it then holds everything that arrived meanwhile (larger batches, and no batch waits
        # behind another that was cut early).
        self.lanes = scorer.lanes
        self._slots = threading.Semaphore(self.lanes + (1 if prefetch else 0))
        self._scoring = self.lanes  # score threads still running
        self._prepared: queue.Queue = queue.Queue(maxsize=self.lanes)
        self._scored: queue.Queue = queue.Queue(maxsize=self.lanes + 1)
        loops = [("prepare", self._prepare_loop)]
        loops += [(f"score-{n}", self._score_loop) for n in range(self.lanes)]
        loops += [("publish", self._publish_loop)]
        self._threads = [threading.Thread(target=self._guard, args=(fn,), name=name,
                                          daemon=True) for name, fn in loops]

    # -- the Kafka loop's side ---------------------------------------------------------------

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def put(self, unit: Unit) -> None:
        with self.progress:
            self._queue.append(unit)
            self._queued_pairs += len(unit.requests)
            self.progress.notify_all()

    def close(self) -> None:
        """Finish what is queued, then stop."""
        with self.progress:
            self._closing = True
            self.progress.notify_all()

    def abandon(self) -> None:
        """Stop: score nothing more (what is queued or prepared is left unanswered, read again
        by the next owner); the batch on the model finishes."""
        with self.progress:
            self._closing = self._abandoned = True
            for unit in self._queue:
                for seg in unit.segs.values():
                    seg.dropped = True
            self._queue.clear()
            self._queued_pairs = 0
            self.progress.notify_all()

    def drop_queued(self, tps: set[TP]) -> None:
        """Units of these partitions not yet taken will not be scored or answered."""
        with self.progress:
            for unit in self._queue:
                for seg in unit.segs.values():
                    if seg.tp in tps:
                        seg.dropped = True

    def busy(self, tps: set[TP]) -> bool:
        with self.progress:
            return any(self._busy[tp] for tp in tps)

    def idle(self) -> bool:
        with self.progress:
            return not self._queue and not self._busy

    def depths(self) -> dict[str, int]:
        """Work waiting at each stage: requests queued for prepare, batches for the model and
        for publishing (for the metrics: which side waits on which)."""
        return {"intake": self._queued_pairs, "prepared": self._prepared.qsize(),
                "scored": self._scored.qsize()}

    def join(self, timeout: float) -> bool:
        """Wait for the threads to end; whether they all did within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    # -- threads -----------------------------------------------------------------------------

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:  # noqa: BLE001 - the Kafka loop stops on it
            self.on_failure(exc)
            with self.progress:
                self.progress.notify_all()

    def _take(self) -> list[Unit] | None:
        with self.progress:
            while not self._queue and not self._closing:
                self.progress.wait()
            if not self._queue:
                return None
            units, pairs = [], 0
            while self._queue and (not units or
                                   pairs + len(self._queue[0].requests) <= self.max_pairs):
                unit = self._queue.popleft()
                pairs += len(unit.requests)
                units.append(unit)
            self._queued_pairs -= pairs
            for unit in units:
                self._busy.update(seg.tp for seg in unit.segs.values())
            self.progress.notify_all()
            return units

    def _prepare_loop(self) -> None:
        while True:
            self._slots.acquire()  # released when the model has finished a batch
            units = self._take()
            if units is None:
                for _ in range(self.lanes):
                    self._prepared.put(_STOP)
                return
            for unit in units:
                if not all(self.tracker.live(s) for s in unit.segs.values()):
                    _forget_requests_of_dead_segments(unit, self.tracker)
            requests = [r for unit in units for r in unit.requests]
            started = time.perf_counter()
            self._prepared.put((units, self.scorer.prepare(requests), started))
            self._moved()

    def _score_loop(self) -> None:
        while True:
            item = self._prepared.get()
            if item is _STOP:
                with self.progress:
                    self._scoring -= 1
                    last = self._scoring == 0
                if last:  # publish stops after the last lane's batch
                    self._scored.put(_STOP)
                return
            units, job, started = item
            self._moved()
            if not self._abandoned:
                job = self.scorer.run(job)
            self._slots.release()
            self._scored.put((units, job, started))
            self._moved()

    def _publish_loop(self) -> None:
        while True:
            item = self._scored.get()
            if item is _STOP:
                return
            units, job, started = item
            if self._abandoned:  # unscored, or no longer to be answered
                self._unbusy(units)
            else:
                self._finish(units, job, started)

    def _moved(self) -> None:
        with self.progress:
            self.progress.notify_all()

    def _finish(self, units: list[Unit], job: Job, started: float) -> None:
        seconds = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.inference_seconds += seconds
        if self.observer is not None:
            self.observer.scored(len(job.requests), seconds)
        at = 0
        for unit in units:
            n = len(unit.requests)
            unit.values = self.scorer.encode(job, at, at + n)
            if job.failed:
                unit.failed = {k - at for k in job.failed if at <= k < at + n}
            at += n
            self.publish(unit)
            if self.observer is not None:
                now = time.time()
                self.observer.published([m.timestamp()[1] for m in unit.msgs], now)
            self._unbusy([unit])

    def _unbusy(self, units: list[Unit]) -> None:
        with self.progress:
            for unit in units:
                self._busy.subtract(seg.tp for seg in unit.segs.values())
            self._busy += Counter()  # drop zero counts
            self.progress.notify_all()


def _forget_requests_of_dead_segments(unit: Unit, tracker: OffsetTracker) -> None:
    """Score nothing for partitions given up while the unit was queued."""
    dead = {p for p, seg in unit.segs.items() if not tracker.live(seg)}
    keep = [(r, i) for r, i in zip(unit.requests, unit.req_msg)
            if unit.msgs[i].partition() not in dead]
    unit.requests = [r for r, _ in keep]
    unit.req_msg = [i for _, i in keep]
