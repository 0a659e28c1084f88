"""GPU memory: how large a batch fits, found once at start-up.

The batch budget is counted in padded tokens. The probe measures the activation memory of a
small batch of worst-case pairs (every pair max_length tokens, the costliest per token),
extrapolates to the free memory, then proves the estimate by running a full worst-case batch,
halving on out-of-memory. At run time the engine's `AdaptiveBudget` shrinks it further after
an out-of-memory error and regrows it slowly.

The proving batch also matters under `--processes N`: each process probes the free memory when
it starts, and two that start together both see the whole card free; the memory the first
proves stays reserved by its allocator, so the second's proving batch runs out and halves
until it fits beside it.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from mgeo.worker.inference.accelerator import Accelerator
from mgeo.worker.inference.batcher import round_up

log = logging.getLogger(__name__)

OOM = (torch.OutOfMemoryError,)
# The probe never goes beyond this: larger batches gain nothing measurable on a GPU and only
# lengthen the latency of a batch. An explicit --token-budget may go higher.
GPU_TOKEN_BUDGET_CAP = 131_072


def probe_budget(accel: Accelerator, forward: Callable[[int, int], None], max_length: int,
                 memory_fraction: float) -> int:
    """The largest budget whose worst-case batch fits in `memory_fraction` of free memory;
    `forward(rows, width)` runs the model on a dummy batch and waits for it."""
    width = round_up(max_length, 8)
    accel.synchronize()
    accel.empty_cache()
    free = accel.free_memory() or 0
    accel.reset_peak()
    base = accel.allocated()
    forward(8, width)
    per_token = max(1.0, ((accel.peak_memory() or base) - base) / (8 * width))
    budget = int(free * memory_fraction / per_token)
    budget = max(width, min(GPU_TOKEN_BUDGET_CAP, budget // width * width))
    while True:
        try:
            forward(budget // width, width)
            break
        except OOM:
            pass  # recover outside the except block, so the failed graph is freed
        accel.empty_cache()
        if budget <= width:
            raise RuntimeError("not even one pair of max_length tokens fits in GPU memory; "
                               "free the GPU or lower --max-length")
        budget = max(width, budget // 2 // width * width)
    log.info("token budget %d (%.1f KiB of activations a token, %.1f GiB free)", budget,
             per_token / 1024, free / 2**30)
    return budget
