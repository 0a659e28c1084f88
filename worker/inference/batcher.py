"""Token-budget batching and the adaptive budget: pure logic, no torch, tested alone.

A model batch costs `pairs x longest pair` padded tokens. Cutting batches by a token budget
instead of a pair count lets short pairs form large batches, and sorting by length first keeps
the padding (the tokens computed for nothing) small.
"""

from __future__ import annotations

from collections.abc import Sequence


def round_up(n: int, multiple: int) -> int:
    """`n` rounded up to a multiple of `multiple` (tensor cores want multiples of 8)."""
    return -(-n // multiple) * multiple


def padded_tokens(lengths: Sequence[int], multiple: int = 1) -> int:
    """Tokens the model computes for one batch of these lengths, padding included."""
    return len(lengths) * round_up(max(lengths), multiple) if lengths else 0


def plan_batches(lengths: Sequence[int], budget: int, *, multiple: int = 1,
                 window: int | None = None, tolerance: float = 0.1,
                 min_fill: float = 0.25) -> list[list[int]]:
    """Group the indices of `lengths` into batches of at most `budget` padded tokens.

    Inside each window of `window` consecutive items (default: all of them) the items are
    sorted longest first, so each batch holds similar lengths and the costliest batch comes
    first (an out-of-memory error shows up at once, not after the cheap work). A batch is also
    closed early when the next item is more than `tolerance` shorter than the batch's width and
    the batch already fills `min_fill` of the budget: that keeps the long tail of lengths from
    padding a whole batch of typical pairs, at the price of a few more, still large, batches.
    A single item longer than the budget becomes a batch of its own: every index appears
    exactly once.
    """
    if budget < 1:
        raise ValueError(f"token budget must be positive, got {budget}")
    n = len(lengths)
    step = window if window and window > 0 else max(n, 1)
    batches: list[list[int]] = []
    for start in range(0, n, step):
        order = sorted(range(start, min(n, start + step)), key=lambda i: -lengths[i])
        batch: list[int] = []
        width = 0  # padded length of the current batch: its first (longest) item
        for i in order:
            if batch and ((len(batch) + 1) * width > budget or (
                    lengths[i] < width * (1 - tolerance)
                    and len(batch) * width >= budget * min_fill)):
                batches.append(batch)
                batch = []
            if not batch:
                width = round_up(lengths[i], multiple)
            batch.append(i)
        if batch:
            batches.append(batch)
    return batches


class AdaptiveBudget:
    """The token budget of the next batch: halved on out-of-memory, regrown slowly.

    After `grow_after` batches in a row without an out-of-memory error the budget grows by
    `growth` (10%), never above `ceiling` (the start-up budget, which was known to fit), so a
    transient memory squeeze costs throughput for a while instead of crashing the worker.
    """

    def __init__(self, start: int, *, floor: int, grow_after: int = 32, growth: float = 1.1):
        if start < 1 or floor < 1:
            raise ValueError("token budgets must be positive")
        self.ceiling = max(start, floor)
        self.floor = floor
        self.current = self.ceiling
        self.grow_after = grow_after
        self.growth = growth
        self._streak = 0

    def shrink(self, failed_tokens: int) -> None:
        """A batch of `failed_tokens` padded tokens ran out of memory: at least halve the budget.

        Halving relative to the failed batch (not only to the budget) guarantees that retrying
        splits that batch, so the retry loop always makes progress.
        """
        self.current = max(self.floor, min(self.current, failed_tokens) // 2)
        self._streak = 0

    def success(self) -> None:
        """A batch ran: count it and grow the budget after enough of them."""
        self._streak += 1
        if self._streak >= self.grow_after and self.current < self.ceiling:
            self.current = min(self.ceiling, max(self.current + 1, int(self.current * self.growth)))
            self._streak = 0
