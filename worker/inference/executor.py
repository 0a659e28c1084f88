"""The device half of a call: every planned batch through the model, on the engine's runner.

A batch is copied to the device (from pinned memory on a GPU) and run through the model call,
in fp16 on a GPU with the softmax in fp32; the results stay on the device until the whole call
is done (`Engine.forward` copies them back at once). A batch planned before the token budget
shrank is cut again by the new budget; a batch that runs out of device memory halves the
budget and is retried in parts, never dropped; a single pair that does not fit is a systemic
error. Each batch that ran is counted and reported to the observers.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import numpy as np
import torch
from torch.profiler import record_function

from mgeo.worker.inference.accelerator import Accelerator
from mgeo.worker.inference.batcher import AdaptiveBudget
from mgeo.worker.inference.layouts import Batch, Inputs, Layout, ModelCall
from mgeo.worker.inference.memory import OOM
from mgeo.worker.inference.runners import Runner
from mgeo.worker.inference.tokenize import Encoded

log = logging.getLogger(__name__)


class BatchObserver(Protocol):
    def model_batch(self, pairs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        """One model batch ran: its pairs, real and padded tokens, and host-side seconds (on a
        GPU: until its kernels were queued)."""


class Counts:
    """The engine's counters, written by the preparing thread and by every lane at once."""

    def __init__(self, *names: str):
        self._values: dict[str, float] = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, **deltas: float) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._values[name] += delta

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)


def run_model(accel: Accelerator, call: ModelCall, inputs: Inputs) -> torch.Tensor:
    """`call` on one batch already on the device, as the accelerator sees a model call."""
    with accel.running(inputs.ids.numel()):
        return call(inputs)


class Executor:
    """Runs planned batches of one layout through a model call on one accelerator."""

    def __init__(self, layout: Layout, call: ModelCall, accel: Accelerator,
                 budget: AdaptiveBudget, counts: Counts, observers: list[BatchObserver]):
        self.layout, self.call, self.accel = layout, call, accel
        self.budget, self.counts, self.observers = budget, counts, observers
        self._budget_lock = threading.Lock()  # the lanes report their batches at once

    def plan(self, enc: Encoded, rows: np.ndarray) -> list[Batch]:
        """`rows` of `enc` cut by the current budget and laid out, pinned for the copy."""
        return [self._build(enc, part)
                for part in self.layout.plan(enc.lengths, rows, self.budget.current)]

    def run(self, enc: Encoded, batches: list[Batch], runner: Runner
            ) -> list[tuple[np.ndarray, torch.Tensor]]:
        """(rows, probabilities on the device) of every part of every batch that ran."""
        done: list[tuple[np.ndarray, torch.Tensor]] = []
        for parts in runner.map(lambda batch: self._run(enc, batch), batches):
            done += parts
        return done

    def logits(self, inputs: Inputs) -> torch.Tensor:
        """The model call on one batch already on the device."""
        return run_model(self.accel, self.call, inputs)

    def _build(self, enc: Encoded, rows: np.ndarray) -> Batch:
        batch = self.layout.build(enc, rows)
        batch.inputs = self.accel.pin(batch.inputs)
        return batch

    def _run(self, enc: Encoded, batch: Batch) -> list[tuple[np.ndarray, torch.Tensor]]:
        """One planned batch; split further when the budget shrank or memory ran out."""
        done = []
        pending = [batch]
        while pending:
            b = pending.pop()
            if b.cost > self.budget.current and len(b.rows) > 1:
                parts = self.layout.plan(enc.lengths, b.rows, self.budget.current)
                if len(parts) > 1:
                    pending.extend(self._build(enc, p) for p in reversed(parts))
                    continue
            started = time.perf_counter()
            try:
                probs = self._probs(b.inputs)
            except OOM:
                probs = None  # handled outside the except block, so the failed graph is freed
            if probs is None:
                self._out_of_memory(len(b.rows), b.cost)
                # Retry in parts: by the shrunk budget, or in halves when the batch already
                # fits it (a few short pairs under the floor of one max-length pair).
                parts = self.layout.plan(enc.lengths, b.rows, self.budget.current)
                if len(parts) == 1:
                    parts = np.array_split(b.rows, 2)
                pending.extend(self._build(enc, p) for p in reversed(parts))
                continue
            done.append((b.rows, probs))
            self._record(len(b.rows), int(enc.lengths[b.rows].sum()), b.cost,
                         time.perf_counter() - started)
        return done

    def _probs(self, inputs: Inputs) -> torch.Tensor:
        with record_function("mgeo.to_device"):
            inputs = self.accel.upload(inputs)
        with torch.inference_mode():
            # Named ranges for `mgeo bench --profile`; on CUDA, forward launches the kernels.
            with record_function("mgeo.forward"):
                logits = self.logits(inputs)
            return logits.float().softmax(-1)

    def _out_of_memory(self, pairs: int, tokens: int) -> None:
        self.counts.add(oom_retries=1)
        self.accel.empty_cache()
        if pairs == 1:
            raise RuntimeError(f"out of {self.accel.name} memory scoring a single pair of "
                               f"{tokens} tokens; free memory on the device or lower "
                               "--max-length")
        with self._budget_lock:
            self.budget.shrink(tokens)
        log.warning("out of memory on a batch of %d pairs (%d tokens); token budget now %d, "
                    "retrying the same pairs", pairs, tokens, self.budget.current)

    def _record(self, pairs: int, tokens: int, padded: int, seconds: float) -> None:
        with self._budget_lock:
            self.budget.success()
        self.counts.add(batches=1, scored_pairs=pairs, tokens=tokens, padded_tokens=padded)
        for observer in self.observers:
            observer.model_batch(pairs, tokens, padded, seconds)
