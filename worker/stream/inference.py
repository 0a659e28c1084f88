"""The inference stage: units in from the Kafka loop, scored units out to the delivery step.

Threads waiting on queues (no polling, no timers):

    submit ──▶ prepare ──▶ score (one a lane) ──▶ publish ──▶ delivery.submit
    (Kafka loop) tokenize   the model                encode results

- prepare takes everything queued now (continuous batching: under light load a batch is what
  has arrived, under heavy load it grows to --max-batch-pairs) as soon as the model can take a
  batch: with a GPU while the previous batch is on the device, on a CPU once a lane is free;
- score runs the model: one thread a lane of the engine, so on a CPU with two lanes a batch that
  arrives while another is scored starts at once on the other lane;
- publish encodes the results and submits each unit, a new immutable one holding its values,
  to the next step (delivery), which produces its answers at once, in the order the batches finish: an answer never waits for the Kafka loop's
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

import dataclasses
import logging
import queue
import threading
import time
from collections import Counter, deque
from typing import Callable

from mgeo.worker.stream.events import Observer, Stats
from mgeo.worker.stream.intake import Unit
from mgeo.worker.stream.step import Step
from mgeo.worker.stream.offsets import TP, OffsetTracker
from mgeo.worker.stream.scoring import Job, Scorer

log = logging.getLogger("mgeo.worker")

_STOP = object()


class InferenceStage:
    """The inference step: `submit` units (Kafka loop), scored units go to `next`."""

    def __init__(self, scorer: Scorer, next: Step, *, tracker: OffsetTracker, stats: Stats,
                 max_pairs: int, on_failure: Callable[[BaseException], None],
                 moved: Callable[[], None], observer: Observer | None = None):
        self.scorer, self.next = scorer, next
        self.tracker, self.stats, self.max_pairs = tracker, stats, max_pairs
        self.on_failure, self.moved, self.observer = on_failure, moved, observer
        # The stage's own waits (prepare for work) and its queue and counts; the Kafka loop is
        # told of every move through `moved`.
        self._cond = threading.Condition()
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
        self._slots = threading.Semaphore(self.lanes + (1 if scorer.prefetch else 0))
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

    def submit(self, unit: Unit) -> None:
        with self._cond:
            self._queue.append(unit)
            self._queued_pairs += len(unit.requests)
            self._cond.notify_all()

    def poll(self) -> None:
        """(Its threads do the work; a failure goes to `on_failure`.)"""

    def close(self) -> None:
        """Finish what is queued, then stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()

    def abandon(self) -> None:
        """Stop: score nothing more (what is queued or prepared is left unanswered, read again
        by the next owner); the batch on the model finishes."""
        with self._cond:
            self._closing = self._abandoned = True
            self.tracker.drop(seg for unit in self._queue for seg in unit.segs.values())
            self._queue.clear()
            self._queued_pairs = 0
            self._cond.notify_all()
        self.moved()

    def drop_queued(self, tps: set[TP]) -> None:
        """Units of these partitions not yet taken will not be scored or answered."""
        with self._cond:
            self.tracker.drop(seg for unit in self._queue for seg in unit.segs.values()
                              if seg.tp in tps)

    def busy(self, tps: set[TP]) -> bool:
        with self._cond:
            return any(self._busy[tp] for tp in tps)

    def idle(self) -> bool:
        with self._cond:
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
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        """A failure stops the worker and abandons the stage; the score and publish threads
        go on taking what comes, unscored and unanswered, until their end: every thread ends
        (the engine can then be closed)."""
        self.on_failure(exc)
        self.abandon()

    def _take(self) -> list[Unit] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
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
        self.moved()
        return units

    def _prepare_loop(self) -> None:
        while True:
            self._slots.acquire()  # released when the model has finished a batch
            units = self._take()
            if units is None:
                for _ in range(self.lanes):
                    self._prepared.put(_STOP)
                return
            units = [unit if all(self.tracker.live(s) for s in unit.segs.values())
                     else _without_requests_of_dead_segments(unit, self.tracker)
                     for unit in units]
            requests = [r for unit in units for r in unit.requests]
            started = time.perf_counter()
            self._prepared.put((units, self.scorer.prepare(requests), started))
            self.moved()

    def _score_loop(self) -> None:
        while True:
            item = self._prepared.get()
            if item is _STOP:
                with self._cond:
                    self._scoring -= 1
                    last = self._scoring == 0
                if last:  # publish stops after the last lane's batch
                    self._scored.put(_STOP)
                return
            units, job, started = item
            self.moved()
            if not self._abandoned:
                try:
                    job = self.scorer.run(job)
                except Exception as exc:  # noqa: BLE001 - e.g. EngineFailure: stop
                    self._failed(exc)
            self._slots.release()
            self._scored.put((units, job, started))
            self.moved()

    def _publish_loop(self) -> None:
        while True:
            item = self._scored.get()
            if item is _STOP:
                return
            units, job, started = item
            if self._abandoned:  # unscored, or no longer to be answered
                self._unbusy(units)
                continue
            try:
                self._finish(units, job, started)
            except Exception as exc:  # noqa: BLE001 - e.g. a fenced producer: stop
                self._failed(exc)

    def _finish(self, units: list[Unit], job: Job, started: float) -> None:
        seconds = time.perf_counter() - started
        self.stats.batches += 1
        self.stats.inference_seconds += seconds
        if self.observer is not None:
            self.observer.scored(len(job.requests), seconds)
        at = 0
        for k, unit in enumerate(units):
            if self._abandoned:  # (a failure meanwhile)
                self._unbusy(units[k:])
                return
            n = len(unit.requests)
            failed = frozenset(k - at for k in job.failed if at <= k < at + n) \
                if job.failed else frozenset()
            scored = dataclasses.replace(unit, values=tuple(self.scorer.encode(job, at, at + n)),
                                         failed=failed)
            at += n
            try:
                self.next.submit(scored)
            except BaseException:
                self._unbusy(units[k:])
                raise
            if self.observer is not None:
                now = time.time()
                self.observer.published([m.timestamp()[1] for m in unit.msgs], now)
            self._unbusy([unit])

    def _unbusy(self, units: list[Unit]) -> None:
        with self._cond:
            for unit in units:
                self._busy.subtract(seg.tp for seg in unit.segs.values())
            self._busy += Counter()  # drop zero counts
        self.moved()


def _without_requests_of_dead_segments(unit: Unit, tracker: OffsetTracker) -> Unit:
    """The unit scoring nothing for partitions given up while it was queued."""
    dead = {p for p, seg in unit.segs.items() if not tracker.live(seg)}
    keep = [(r, i) for r, i in zip(unit.requests, unit.req_msg)
            if unit.msgs[i].partition() not in dead]
    return dataclasses.replace(unit, requests=tuple(r for r, _ in keep),
                               req_msg=tuple(i for _, i in keep))
