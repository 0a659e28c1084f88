"""Which input offsets may be committed, and which partitions are still ours.

Messages are tracked a poll at a time: the messages one poll returned from one partition form a
`Segment`. A partition's commit position is the end of its longest prefix of completed segments
(every answer confirmed delivered, or committed in a transaction): never past in-flight work,
so a crash can only cause redelivery, never loss. Each assignment (and each exactly-once rewind)
of a partition starts a new generation; a segment of an older generation completes nothing and
its answers must not be sent (`live`), so it cannot touch a newer owner's position.

The Kafka loop, the inference thread and the delivery thread all use one tracker; `lock` makes
each call atomic, and callers hold it across "is this still ours?" and the send that depends on
the answer, so a partition cannot be given up in between.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

TP = tuple[str, int]


class Segment:
    """Messages of one poll from one partition: offsets up to `end` (exclusive)."""

    __slots__ = ("tp", "gen", "end", "count", "pending", "published", "done", "dropped",
                 "results", "errors", "dead", "unit")

    def __init__(self, tp: TP, gen: int, end: int, count: int, unit: Any = None):
        self.tp, self.gen, self.end, self.count, self.unit = tp, gen, end, count, unit
        self.pending = 0         # answers sent and not yet confirmed (at-least-once)
        self.published = False   # its answers were handed to the producer
        self.done = False
        self.dropped = False     # its partition is being revoked: leave it to the new owner
        self.results = self.errors = self.dead = 0  # answers by kind, counted when final


@dataclass
class _Partition:
    gen: int
    segments: deque[Segment] = field(default_factory=deque)
    inflight: int = 0                # messages of unfinished segments
    position: int | None = None      # next offset to commit (end of the completed prefix)
    committed: int | None = None     # what was last committed
    start: int | None = None         # first offset read in this generation


class OffsetTracker:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._parts: dict[TP, _Partition] = {}
        self._gens: dict[TP, int] = {}
        self.inflight = 0

    # -- ownership ---------------------------------------------------------------------------

    def assign(self, tp: TP) -> None:
        with self.lock:
            self.release(tp)  # a repeated assignment must not leak the old entry's count
            self._parts[tp] = _Partition(self._gens[tp])

    def release(self, tp: TP) -> int:
        """Forget a partition (revoked or lost); returns how many of its messages were read
        and not answered. Late answers for it are not sent and complete nothing."""
        with self.lock:
            part = self._parts.pop(tp, None)
            self._gens[tp] = self._gens.get(tp, 0) + 1
            if part is None:
                return 0
            self.inflight -= part.inflight
            return part.inflight

    def owns(self, tp: TP) -> bool:
        return tp in self._parts

    def live(self, seg: Segment) -> bool:
        """Whether `seg`'s answers may still be sent: its partition is ours, in its
        generation, and not being handed over."""
        part = self._parts.get(seg.tp)
        return part is not None and part.gen == seg.gen and not seg.dropped

    def partitions(self) -> list[TP]:
        return list(self._parts)

    # -- progress ----------------------------------------------------------------------------

    def add(self, tp: TP, first: int, end: int, count: int, unit: Any = None
            ) -> Segment | None:
        """Record `count` messages of `tp` read up to offset `end` (exclusive), the first at
        `first`; None when `tp` is not ours (the messages must be dropped)."""
        with self.lock:
            part = self._parts.get(tp)
            if part is None:
                return None
            if part.start is None:
                part.start = first
            seg = Segment(tp, part.gen, end, count, unit)
            part.segments.append(seg)
            part.inflight += count
            self.inflight += count
            return seg

    def complete(self, seg: Segment) -> bool:
        """Every answer of `seg` is final; False when it belongs to a partition given up."""
        with self.lock:
            part = self._parts.get(seg.tp)
            if part is None or part.gen != seg.gen or seg.done:
                return False
            seg.done = True
            while part.segments and part.segments[0].done:
                first = part.segments.popleft()
                part.position = first.end
                part.inflight -= first.count
                self.inflight -= first.count
            return True

    def unconfirmed(self, tps: set[TP]) -> int:
        """Answers of these partitions sent and not yet confirmed."""
        with self.lock:
            return sum(s.pending for tp in tps if tp in self._parts
                       for s in self._parts[tp].segments if s.published and not s.done)

    def unanswered(self, tps: set[TP] | None = None) -> int:
        with self.lock:
            return sum(p.inflight for tp, p in self._parts.items() if tps is None or tp in tps)

    def to_commit(self, tps: set[TP] | None = None) -> dict[TP, int]:
        """Positions that moved since the last commit."""
        with self.lock:
            return {tp: p.position for tp, p in self._parts.items()
                    if (tps is None or tp in tps) and p.position is not None
                    and p.position != p.committed}

    def committed(self, positions: dict[TP, int]) -> None:
        with self.lock:
            for tp, pos in positions.items():
                part = self._parts.get(tp)
                if part is not None:
                    part.committed = pos

    def rewind(self, tp: TP) -> int | None:
        """Forget everything read of `tp` since its last commit and start a new generation;
        returns the offset to read again from (None when nothing was read). Used when an
        exactly-once transaction is aborted: its answers are gone, so their inputs are redone."""
        with self.lock:
            part = self._parts.get(tp)
            if part is None:
                return None
            target = part.committed if part.committed is not None else part.start
            self.release(tp)
            self._parts[tp] = _Partition(self._gens[tp], committed=part.committed)
            return target
