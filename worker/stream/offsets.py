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

TP = tuple[str, int]


@dataclass(frozen=True, eq=False, slots=True)
class Segment:
    """Messages of one poll from one partition: offsets up to `end` (exclusive). Immutable:
    what happens to it (answers sent, done, dropped) is the tracker's state, kept by it."""

    tp: TP
    gen: int
    end: int
    count: int


@dataclass
class _Partition:
    gen: int
    segments: deque[Segment] = field(default_factory=deque)
    inflight: int = 0                # messages of unfinished segments
    position: int | None = None      # next offset to commit (end of the completed prefix)
    committed: int | None = None     # what was last committed
    start: int | None = None         # first offset read in this generation
    done: set[Segment] = field(default_factory=set)      # final, behind an unfinished one
    dropped: set[Segment] = field(default_factory=set)   # left to the next owner
    pending: dict[Segment, int] = field(default_factory=dict)  # answers sent, unconfirmed


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
        return part is not None and part.gen == seg.gen and seg not in part.dropped

    def drop(self, segs) -> None:
        """Leave these segments to the next owner of their partitions: none of their answers
        is sent (their partitions are being given up, or the worker leaves)."""
        with self.lock:
            for seg in segs:
                part = self._parts.get(seg.tp)
                if part is not None and part.gen == seg.gen:
                    part.dropped.add(seg)

    def partitions(self) -> list[TP]:
        return list(self._parts)

    # -- progress ----------------------------------------------------------------------------

    def add(self, tp: TP, first: int, end: int, count: int) -> Segment | None:
        """Record `count` messages of `tp` read up to offset `end` (exclusive), the first at
        `first`; None when `tp` is not ours (the messages must be dropped)."""
        with self.lock:
            part = self._parts.get(tp)
            if part is None:
                return None
            if part.start is None:
                part.start = first
            seg = Segment(tp, part.gen, end, count)
            part.segments.append(seg)
            part.inflight += count
            self.inflight += count
            return seg

    def complete(self, seg: Segment) -> bool:
        """Every answer of `seg` is final; False when it belongs to a partition given up."""
        with self.lock:
            part = self._parts.get(seg.tp)
            if part is None or part.gen != seg.gen or seg in part.done \
                    or (part.position is not None and seg.end <= part.position):
                return False  # given up, or complete already (the prefix passed it)
            part.done.add(seg)
            part.pending.pop(seg, None)
            while part.segments and part.segments[0] in part.done:
                first = part.segments.popleft()
                part.done.discard(first)
                part.dropped.discard(first)
                part.position = first.end
                part.inflight -= first.count
                self.inflight -= first.count
            return True

    def sent(self, seg: Segment, n: int = 1) -> None:
        """`n` answers of `seg` are being handed to the producer (at-least-once)."""
        with self.lock:
            part = self._parts.get(seg.tp)
            if part is not None and part.gen == seg.gen:
                part.pending[seg] = part.pending.get(seg, 0) + n

    def confirmed(self, seg: Segment) -> int | None:
        """One answer of `seg` is confirmed (or will not be sent after all): how many are
        left unconfirmed; None when its partition was given up meanwhile."""
        with self.lock:
            part = self._parts.get(seg.tp)
            if part is None or part.gen != seg.gen or seg not in part.pending:
                return None
            left = part.pending[seg] - 1
            part.pending[seg] = left
            return left

    def unconfirmed(self, tps: set[TP]) -> int:
        """Answers of these partitions sent and not yet confirmed."""
        with self.lock:
            return sum(n for tp in tps if tp in self._parts
                       for n in self._parts[tp].pending.values())

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
