"""Whether the Kafka loop still reads the partitions it holds.

A loop that ticks is not necessarily a loop that reads: a partition left paused inside
librdkafka (it keeps a partition's pause flag across unassign and assign, issue 18) is held by
the worker, owes the group its messages and is never fetched, while the loop polls happily.
`ReadWatch` keeps, for each partition the loop holds, when it last read from it (or started to
be able to: assigned, resumed). A partition not read for `bound` seconds while the loop is not
paused by back-pressure is checked against the broker: when the broker says there are messages
past where the worker stands, the partition is stalled, and /healthz, the metrics and an alert
say so. Without the broker's answer there is no verdict (a broker that is down is not a reason
to restart its workers).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import KafkaException, TopicPartition

from mgeo.worker.stream.events import Stats
from mgeo.worker.stream.offsets import TP

log = logging.getLogger("mgeo.worker")

QUERY_SECONDS = 2.0  # the most a check may block the loop, broker calls together


class ReadWatch:
    def __init__(self, stats: Stats, bound: float):
        self.stats, self.bound = stats, bound
        self.every = max(1.0, bound / 4)  # between broker checks of a late partition
        self._read_at: dict[TP, float] = {}
        self._look_at = 0.0   # the next time the clocks are looked at (once a second)
        self._check_at = 0.0  # the next time the broker may be asked

    # -- the Kafka loop's events -------------------------------------------------------------

    def start(self, tps, now: float) -> None:
        """These partitions can be read from now on (assigned, or resumed)."""
        for tp in tps:
            self._read_at[tp] = now

    def read(self, tp: TP, now: float) -> None:
        self._read_at[tp] = now

    def forget(self, tps) -> None:
        """These partitions are no longer held (revoked, lost)."""
        for tp in tps:
            self._read_at.pop(tp, None)
        if any(tp in self.stats.stalled for tp in tps):
            self._clear()  # judged again, without them, at the next check
            self._check_at = 0.0

    # -- the verdict -------------------------------------------------------------------------

    def check(self, consumer, paused: bool, now: float) -> None:
        """(Kafka loop, every tick) Judge the partitions not read for `bound` seconds."""
        if paused:  # back-pressure: not reading is what it should do
            self._clear()
            return
        if now < self._look_at:
            return
        self._look_at = now + 1.0
        late = [tp for tp, t in self._read_at.items() if now - t > self.bound]
        if not late:
            self._clear()
            return
        if now < self._check_at:
            return
        self._check_at = now + self.every
        lags = behind(consumer, late, time.monotonic() + QUERY_SECONDS)
        if lags is None:  # the broker did not answer: no verdict
            self._clear()
            return
        stuck = {tp: n for tp, n in lags.items() if n > 0}
        for tp in late:
            if tp not in stuck:  # nothing there to read: not late after all
                self._read_at[tp] = now
        if not stuck:
            self._clear()
            return
        idle = now - min(self._read_at[tp] for tp in stuck)
        names = ", ".join(f"{t}[{p}]" for t, p in sorted(stuck))
        reason = (f"the Kafka loop holds {len(stuck)} partitions with messages to read (at "
                  f"least {sum(stuck.values())}, by the broker) and has read none of them for "
                  f"{idle:.0f}s, though not paused: {names}")
        if not self.stats.stalled:
            log.error("%s; /healthz fails until it reads again", reason)
        self.stats.stalled = stuck
        self.stats.stall_reason = reason

    def _clear(self) -> None:
        if self.stats.stalled:
            log.info("reading again: no partition is stalled any more")
        self.stats.stalled = {}
        self.stats.stall_reason = None


def behind(consumer, tps: list[TP], deadline: float) -> dict[TP, int] | None:
    """How many messages of each partition lie past where the worker stands, by the broker:
    its end offset less the consumer's position (or, before the first fetch, the group's
    committed offset, or the log start). None when the broker does not answer in time."""

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    parts = [TopicPartition(t, p) for t, p in tps]
    try:
        at = {(tp.topic, tp.partition): tp.offset for tp in consumer.position(parts)}
        unknown = [TopicPartition(t, p) for (t, p), off in at.items() if off < 0]
        if unknown:
            for tp in consumer.committed(unknown, timeout=left()):
                at[(tp.topic, tp.partition)] = tp.offset
        lags = {}
        for tp in parts:
            if time.monotonic() >= deadline:
                return None
            low, high = consumer.get_watermark_offsets(tp, timeout=left(), cached=False)
            start = at.get((tp.topic, tp.partition), -1)
            lags[(tp.topic, tp.partition)] = max(0, high - (start if start >= 0 else low))
        return lags
    except KafkaException:
        return None
