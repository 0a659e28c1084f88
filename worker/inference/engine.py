"""The inference engine: address pairs in, label probabilities out, as fast as the device allows.

It knows nothing of Kafka. A call has two halves that may run on two threads, so that the CPU
prepares the next call while the device runs this one:

- `prepare(pairs)` (CPU only): identical pairs scored once, the cache consulted, every distinct
  address tokenized once (`PairEncoder`: MGeo's exact inputs without the wrapper's per-token
  Python), the pairs sorted by length, cut into batches by a token budget and laid out for the
  model (pinned on a GPU host) by the batch layout (`layouts.py`: packed or padded);
- `forward(prepared)` (the device): every batch through the model call (`executor.py`: fp16
  on a GPU with softmax in fp32; out-of-memory errors halve the budget and retry the same
  pairs) on the engine's runner (`runners.py`: inline on a GPU; on a CPU, lanes that run
  several batches at once, from one call or from several calls made at the same time), with
  one device-to-host copy at the end of the call rather than one a batch.

`score_rows(pairs)` does both in one call; `score(pairs)` returns one `Scored` object a pair.
Each model batch is reported to the observers added with `add_observer` (the worker's metrics).
The model call can be wrapped at construction (`model_call`): tests inject fakes and faults
there.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch.profiler import record_function

from mgeo.worker.inference.accelerator import Accelerator, accelerator_for
from mgeo.worker.inference.batcher import AdaptiveBudget, round_up
from mgeo.worker.inference.device import (quantize_int8, resolve_device, resolve_positive,
                                          resolve_precision, torch_dtype)
from mgeo.worker.inference.executor import BatchObserver, Counts, Executor, run_model
from mgeo.worker.inference.layouts import (Batch, ClassifierCall, Inputs, ModelCall, Padded,
                                           layout_for, resolve_layout)
from mgeo.worker.inference.memory import probe_budget
from mgeo.worker.inference.runners import Runner, runner_for
from mgeo.worker.inference.tokenize import Encoded, PairEncoder

if TYPE_CHECKING:
    from mgeo.settings import ModelSettings

CPU_TOKEN_BUDGET = 8192
_COUNTS = ("pairs", "deduplicated", "cache_hits", "cache_misses", "truncated",
           "tokenize_seconds", "batches", "scored_pairs", "tokens", "padded_tokens",
           "oom_retries")


@dataclass(slots=True)
class Scored:
    """One pair's result. Shared between identical pairs and the cache: treat it as read-only."""

    probs: dict[str, float]  # every label of the model -> probability (softmax in fp32)
    truncated: bool  # True when the pair was cut to max_length tokens


@dataclass(slots=True)
class Rows:
    """The results of one call, in input order: `probs[i]` lists pair i's probability of each
    label in `Engine.labels` order."""

    probs: list[list[float]]
    truncated: list[bool]


@dataclass(slots=True)
class Prepared:
    """Pairs tokenized and cut into batches on the CPU, ready for `Engine.forward`."""

    size: int                            # pairs of the call
    inverse: np.ndarray                  # pair i -> its distinct pair
    keys: list[tuple[str, str]]          # the distinct pairs
    enc: Encoded | None                  # the distinct pairs still to score
    todo: np.ndarray                     # distinct pair of each row of `enc`
    batches: list[Batch]
    cached: list[tuple[int, Scored]]     # distinct pairs answered by the cache


class _LRU:
    """A small least-recently-used map of pair -> Scored, safe across the two halves."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[tuple[str, str], Scored] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> Scored | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: Scored) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Engine:
    """Scores address pairs with a sequence-classification model.

    `prepare` and `forward` may run on two threads at once (one thread each), and on a CPU
    `forward` on as many threads at once as there are lanes; `score_rows` and `score` may be
    called from any thread (a lock keeps them one at a time).

    `model_call`, when given, is handed the engine's own model call (`ClassifierCall` on the
    prepared model) and returns the one every batch runs through: a wrapper that injects
    faults, or a fake that never runs the model.
    """

    def __init__(self, tokenizer, model, id2label: dict[int, str], *, device: str = "auto",
                 precision: str = "auto", max_length: int = 128, token_budget: int | None = None,
                 memory_fraction: float = 0.8, cache_size: int = 0,
                 positive_labels: Sequence[str] | None = None, model_name: str = "model",
                 grow_after: int = 32, batch_layout: str = "auto", lanes: int | None = None,
                 threads: int | None = None, accelerator: Accelerator | None = None,
                 model_call: Callable[[ModelCall], ModelCall] | None = None):
        # Every device-specific call goes through the accelerator (a simulated GPU in tests).
        self.accel = accelerator or accelerator_for(resolve_device(device))
        self.device = self.accel.name
        self.precision = resolve_precision(precision, self.device)
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.positive = resolve_positive(self.labels, positive_labels)
        self.model_name = model_name
        self.max_length = max_length
        self.memory_fraction = memory_fraction
        self.tokenizer = tokenizer
        self.encoder = PairEncoder(tokenizer, max_length)
        self.model = self._prepare_model(model)
        self.layout = resolve_layout(batch_layout, self.model, self.device)
        call: ModelCall = ClassifierCall(self.model, packed=self.layout == "packed")
        if model_call is not None:
            call = model_call(call)
        self.runner: Runner = runner_for(self.device, lanes, threads)
        self.lanes, self.lane_threads = self.runner.lanes, self.runner.threads
        self._cache = _LRU(cache_size) if cache_size > 0 else None
        self._lock = threading.Lock()
        self._observers: list[BatchObserver] = []
        self._counts = Counts(*_COUNTS)
        multiple = self.accel.width_multiple
        # The start-up budget's probe runs through the (possibly wrapped) model call too.
        budget = AdaptiveBudget(token_budget or self._startup_budget(call),
                                floor=round_up(max_length, multiple), grow_after=grow_after)
        layout = layout_for(self.layout, self.encoder, multiple=multiple, lanes=self.lanes)
        self._executor = Executor(layout, call, self.accel, budget, self._counts,
                                  self._observers)

    @classmethod
    def from_settings(cls, s: "ModelSettings", accelerator: Accelerator | None = None,
                      model_call: Callable[[ModelCall], ModelCall] | None = None) -> "Engine":
        from mgeo.worker.inference.model import default_model_dir, load_serving

        path = Path(s.model) if s.model else default_model_dir()
        tokenizer, model, id2label = load_serving(path, label_map=s.label_map, mgeo=True)
        return cls(tokenizer, model, id2label, device=s.device, precision=s.precision,
                   max_length=s.max_length, token_budget=s.token_budget,
                   memory_fraction=s.memory_fraction, cache_size=s.cache_size,
                   positive_labels=s.positive_labels, model_name=path.resolve().name,
                   batch_layout=s.batch_layout, lanes=s.lanes, threads=s.threads,
                   accelerator=accelerator, model_call=model_call)

    # ---- public surface -------------------------------------------------------------------

    @property
    def token_budget(self) -> int:
        return self._executor.budget.current

    def add_observer(self, observer: BatchObserver) -> None:
        self._observers.append(observer)

    def score_rows(self, pairs: Sequence[tuple[str, str]]) -> Rows:
        """Probabilities of each (addr1, addr2), in input order; raises only on systemic
        failure (or, for `Scorer` to isolate, on a pair the model cannot run)."""
        with self._lock:
            return self.forward(self.prepare(pairs))

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Scored]:
        """`score_rows`, one `Scored` (label -> probability) a pair."""
        rows = self.score_rows(pairs)
        return [Scored(dict(zip(self.labels, p)), t) for p, t in zip(rows.probs, rows.truncated)]

    def logits(self, inputs: Inputs) -> torch.Tensor:
        """The model call on one prepared batch's inputs, already on the device (for
        measuring the model alone: `mgeo bench`)."""
        return self._executor.logits(inputs)

    def stats(self) -> dict:
        c: dict = self._counts.snapshot()
        c["padding_efficiency"] = c["tokens"] / c["padded_tokens"] if c["padded_tokens"] else 1.0
        looked_up = c["cache_hits"] + c["cache_misses"]
        c["cache_hit_rate"] = c["cache_hits"] / looked_up if looked_up else 0.0
        c["cache_entries"] = len(self._cache) if self._cache is not None else 0
        c["token_budget"] = self._executor.budget.current
        c["token_budget_max"] = self._executor.budget.ceiling
        c["tokenizer_fallbacks"] = self.encoder.fallbacks
        c.update(device=self.device, precision=self.precision, batch_layout=self.layout,
                 lanes=self.lanes, lane_threads=self.lane_threads)
        return c

    def close(self) -> None:
        """Let the runner's threads go (after the batches they run)."""
        self.runner.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the CPU half ---------------------------------------------------------------------

    def prepare(self, pairs: Sequence[tuple[str, str]]) -> Prepared:
        """Deduplicate, look up the cache, tokenize, plan and lay out; no device work."""
        started = time.perf_counter()
        index: dict[tuple[str, str], int] = {}
        inverse = np.fromiter((index.setdefault(p, len(index)) for p in pairs),
                              dtype=np.int64, count=len(pairs))
        keys = list(index)
        cached: list[tuple[int, Scored]] = []
        todo = list(range(len(keys)))
        if self._cache is not None:
            todo = []
            for i, key in enumerate(keys):
                hit = self._cache.get(key)
                if hit is None:
                    todo.append(i)
                else:
                    cached.append((i, hit))
            self._counts.add(cache_hits=len(cached), cache_misses=len(todo))
        enc = None
        batches: list[Batch] = []
        truncated = 0
        if todo:
            enc = self.encoder.encode([keys[i] for i in todo])
            truncated = int(enc.truncated.sum())
            batches = self._executor.plan(enc, np.arange(len(todo)))
        self._counts.add(pairs=len(pairs), deduplicated=len(pairs) - len(keys),
                         truncated=truncated, tokenize_seconds=time.perf_counter() - started)
        return Prepared(len(pairs), inverse, keys, enc, np.asarray(todo, dtype=np.int64),
                        batches, cached)

    # ---- the device half ------------------------------------------------------------------

    def forward(self, prep: Prepared, runner: Runner | None = None) -> Rows:
        """Run every batch of `prep` (on the engine's runner, or on `runner`: a profiler's);
        the results in the input order of its pairs."""
        uniq_probs = np.zeros((len(prep.keys), len(self.labels)), dtype=np.float64)
        uniq_trunc = np.zeros(len(prep.keys), dtype=bool)
        for i, hit in prep.cached:
            uniq_probs[i] = [hit.probs[label] for label in self.labels]
            uniq_trunc[i] = hit.truncated
        if prep.enc is not None:
            done = self._executor.run(prep.enc, prep.batches, runner or self.runner)
            if done:
                rows = np.concatenate([r for r, _ in done])
                probs = torch.cat([p for _, p in done])
                with record_function("mgeo.to_host"):  # on CUDA: waits for the kernels
                    uniq_probs[prep.todo[rows]] = probs.cpu().numpy()
            uniq_trunc[prep.todo] = prep.enc.truncated
            if self._cache is not None:
                for i in prep.todo.tolist():
                    self._cache.put(prep.keys[i], Scored(
                        dict(zip(self.labels, uniq_probs[i].tolist())), bool(uniq_trunc[i])))
        return Rows(uniq_probs[prep.inverse].tolist(), uniq_trunc[prep.inverse].tolist())

    # ---- set-up ---------------------------------------------------------------------------

    def _prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model.eval().requires_grad_(False)
        if self.precision == "int8":
            return quantize_int8(model)
        return model.to(device=self.accel.torch_device, dtype=torch_dtype(self.precision))

    def _startup_budget(self, call: ModelCall) -> int:
        if self.device != "cuda":
            return CPU_TOKEN_BUDGET

        def worst_case(rows: int, width: int) -> None:
            """A batch of max-length pairs, padded as real batches are (so it runs the
            kernels they run)."""
            where = self.accel.torch_device
            ids = torch.full((rows, width), self.tokenizer.unk_token_id or 0, device=where)
            mask = torch.ones((rows, 1, 1, width), dtype=torch.bool, device=where)
            mask[..., -1] = False
            with torch.inference_mode():
                run_model(self.accel, call, Padded(ids, torch.zeros_like(ids), mask))
            self.accel.synchronize()

        return probe_budget(self.accel, worst_case, self.max_length, self.memory_fraction)
