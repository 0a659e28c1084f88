"""Which input offsets may be committed.

A partition's commit position is the first offset whose answer (result or dead letter) is not
yet confirmed delivered: never past in-flight work, so a crash can only cause redelivery, never
loss. Each assignment of a partition gets a new generation; answers that come back for an older
generation (after a revoke) are ignored, so they cannot move a newer owner's position.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

TP = tuple[str, int]


@dataclass
class _Partition:
    gen: int
    pending: deque[int] = field(default_factory=deque)  # offsets in the order read
    done: set[int] = field(default_factory=set)
    position: int | None = None        # next offset to commit (first not done)
    committed: int | None = None       # what was last committed
    start: int | None = None           # first offset read in this generation


class OffsetTracker:
    def __init__(self) -> None:
        self._parts: dict[TP, _Partition] = {}
        self._gens: dict[TP, int] = {}
        self.inflight = 0

    def assign(self, tp: TP) -> int:
        gen = self._gens.get(tp, 0) + 1
        self._gens[tp] = gen
        self._parts[tp] = _Partition(gen)
        return gen

    def release(self, tp: TP) -> None:
        """Forget a partition (revoked or lost); late answers for it are ignored."""
        part = self._parts.pop(tp, None)
        if part is not None:
            self.inflight -= len(part.pending)
        self._gens[tp] = self._gens.get(tp, 0) + 1

    def generation(self, tp: TP) -> int:
        return self._gens.get(tp, 0)

    def current(self, tp: TP, gen: int) -> bool:
        part = self._parts.get(tp)
        return part is not None and part.gen == gen

    def add(self, tp: TP, offset: int) -> int:
        """Record a message as read; returns the generation its answer must carry."""
        part = self._parts.get(tp)
        if part is None:  # a message of a partition we were not told about: track it anyway
            self.assign(tp)
            part = self._parts[tp]
        if part.start is None:
            part.start = offset
        part.pending.append(offset)
        self.inflight += 1
        return part.gen

    def done(self, tp: TP, offset: int, gen: int) -> list[int]:
        """Record an answer as delivered (at-least-once) or written into the open transaction
        (exactly-once); returns the offsets this completes, in order: `offset` and any answered
        ones after it that waited for it. Stale generations complete nothing."""
        part = self._parts.get(tp)
        if part is None or part.gen != gen:
            return []
        part.done.add(offset)
        released = []
        while part.pending and part.pending[0] in part.done:
            off = part.pending.popleft()
            part.done.discard(off)
            part.position = off + 1
            self.inflight -= 1
            released.append(off)
        return released

    def rewind(self, tp: TP) -> int | None:
        """Forget everything read of `tp` since its last commit and start a new generation;
        returns the offset to read again from (None when nothing was read). Used when an
        exactly-once transaction is aborted: its answers are gone, so their inputs are redone."""
        part = self._parts.get(tp)
        if part is None:
            return None
        target = part.committed if part.committed is not None else part.start
        self.release(tp)
        gen = self._gens[tp]
        self._parts[tp] = _Partition(gen, committed=part.committed)
        return target

    def pending(self, tp: TP) -> int:
        part = self._parts.get(tp)
        return len(part.pending) if part else 0

    def to_commit(self, tps: list[TP] | None = None) -> dict[TP, int]:
        """Positions that moved since the last commit."""
        out = {}
        for tp, part in self._parts.items():
            if tps is not None and tp not in tps:
                continue
            if part.position is not None and part.position != part.committed:
                out[tp] = part.position
        return out

    def committed(self, positions: dict[TP, int]) -> None:
        for tp, pos in positions.items():
            part = self._parts.get(tp)
            if part is not None:
                part.committed = pos

    def partitions(self) -> list[TP]:
        return list(self._parts)
