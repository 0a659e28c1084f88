"""The inference engine: address pairs in, label probabilities out, as fast as the device allows.

It knows nothing of Kafka. A call has two halves that may run on two threads, so that the CPU
prepares the next call while the device runs this one:

- `prepare(pairs)` (CPU only): identical pairs scored once, the cache consulted, every distinct
  address tokenized once (`PairEncoder`: MGeo's exact inputs without the wrapper's per-token
  Python), the pairs sorted by length and cut into batches by a token budget, each batch laid
  out for the model (pinned on a GPU host) in one of two layouts:
  - packed (`packed.py`, BERT models; the default on a CPU): the pairs' tokens end to end, no
    padding except inside attention, so a batch of pairs of all lengths costs what its tokens
    cost;
  - padded: `pairs x longest pair` tensors for the `transformers` call (any architecture);
    sorting keeps the padding small in large batches, not in the small ones of a light stream;
- `forward(prepared)` (the device): every batch run in fp16 on a GPU (softmax in fp32), with one
  device-to-host copy at the end of the call rather than one a batch. A CUDA out-of-memory error
  halves the budget and retries the same pairs, never drops them. On a CPU the batches run on
  the engine's lanes: threads that each run one batch at a time with `threads / lanes` torch
  threads of their own. Several lanes compute at once, from one call or from several calls made
  at the same time, without the barrier every operator puts between the threads of one batch;
  on small matrices that is most of the gain of more cores (see `device.resolve_lanes`).

`score_rows(pairs)` does both in one call; `score(pairs)` returns one `Scored` object a pair.
Each model batch is reported to the observers added with `add_observer` (the worker's metrics).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol, Sequence

import numpy as np
import torch
from torch.profiler import record_function

from mgeo.worker.inference.accelerator import Accelerator, accelerator_for
from mgeo.worker.inference.batcher import AdaptiveBudget, plan_batches, round_up
from mgeo.worker.inference.device import (quantize_int8, resolve_device, resolve_lanes,
                                          resolve_positive, resolve_precision, torch_dtype)
from mgeo.worker.inference.lanes import Lanes
from mgeo.worker.inference.memory import OOM, probe_budget
from mgeo.worker.inference.packed import Packed, PackedBert, move, unsupported
from mgeo.worker.inference.tokenize import Encoded, PairEncoder

if TYPE_CHECKING:
    from mgeo.settings import ModelSettings

log = logging.getLogger(__name__)

CPU_TOKEN_BUDGET = 8192


class BatchObserver(Protocol):
    def model_batch(self, pairs: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        """One model batch ran: its pairs, real and padded tokens, and host-side seconds (on a
        GPU: until its kernels were queued)."""


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
class Padded:
    """The model inputs of a padded batch: [pairs, width] ids and token types, and the
    attention mask ([pairs, 1, 1, width] bool) or None when nothing is padding."""

    ids: torch.Tensor
    types: torch.Tensor
    mask: torch.Tensor | None

    def to(self, device: str, pin: bool = False) -> "Padded":
        return Padded(*(move(t, device, pin) for t in (  # type: ignore[arg-type]
            self.ids, self.types, self.mask)))


@dataclass(slots=True)
class _Batch:
    rows: np.ndarray       # rows of `Prepared.enc`
    cost: int              # tokens the linear layers compute: padded, or real when packed
    inputs: Padded | Packed


@dataclass(slots=True)
class Prepared:
    """Pairs tokenized and cut into padded batches on the CPU, ready for `Engine.forward`."""

    size: int                            # pairs of the call
    inverse: np.ndarray                  # pair i -> its distinct pair
    keys: list[tuple[str, str]]          # the distinct pairs
    enc: Encoded | None                  # the distinct pairs still to score
    todo: np.ndarray                     # distinct pair of each row of `enc`
    batches: list[_Batch]
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
    """

    def __init__(self, tokenizer, model, id2label: dict[int, str], *, device: str = "auto",
                 precision: str = "auto", max_length: int = 128, token_budget: int | None = None,
                 memory_fraction: float = 0.8, cache_size: int = 0,
                 positive_labels: Sequence[str] | None = None, model_name: str = "model",
                 grow_after: int = 32, batch_layout: str = "auto", lanes: int | None = None,
                 threads: int | None = None, accelerator: Accelerator | None = None):
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
        self.layout = self._resolve_layout(batch_layout)
        self._packed = PackedBert(self.model) if self.layout == "packed" else None
        self._multiple = self.accel.width_multiple
        start = token_budget or self._startup_budget()
        self._budget = AdaptiveBudget(start, floor=round_up(max_length, self._multiple),
                                      grow_after=grow_after)
        self._cache = _LRU(cache_size) if cache_size > 0 else None
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()  # the lanes record their batches at once
        self._observers: list[BatchObserver] = []
        total = threads or torch.get_num_threads()
        self.lanes = resolve_lanes(lanes, self.device, total)
        self.lane_threads = max(1, total // self.lanes)
        self._pool = Lanes(self.lanes, self.lane_threads) if self.device == "cpu" else None
        if self._pool is None and threads:
            torch.set_num_threads(threads)  # the host-side operators of a GPU process
        # Written by the preparing thread: pairs .. tokenize_seconds; by the lanes (or the
        # device thread), under _count_lock: batches .. oom_retries. stats() reads them.
        self._counts = dict.fromkeys(
            ("pairs", "deduplicated", "cache_hits", "cache_misses", "truncated", "batches",
             "scored_pairs", "tokens", "padded_tokens", "oom_retries"), 0)
        self._counts["tokenize_seconds"] = 0.0

    @classmethod
    def from_settings(cls, s: "ModelSettings", accelerator: Accelerator | None = None
                      ) -> "Engine":
        from mgeo.worker.inference.model import default_model_dir, load_model

        path = Path(s.model) if s.model else default_model_dir()
        tokenizer, model, id2label = load_model(path, label_map=s.label_map, mgeo=True)
        return cls(tokenizer, model, id2label, device=s.device, precision=s.precision,
                   max_length=s.max_length, token_budget=s.token_budget,
                   memory_fraction=s.memory_fraction, cache_size=s.cache_size,
                   positive_labels=s.positive_labels, model_name=path.resolve().name,
                   batch_layout=s.batch_layout, lanes=s.lanes, threads=s.threads,
                   accelerator=accelerator)

    # ---- public surface -------------------------------------------------------------------

    @property
    def token_budget(self) -> int:
        return self._budget.current

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

    def model_seconds(self, pairs: Sequence[tuple[str, str]]) -> float:
        """Seconds the model alone takes for `pairs`: the batches the engine would run, already
        tokenized and on the device, timed from the first launch to the last result (the
        bound for `forward`, which adds the copies to the device and back)."""
        prep = self.prepare(pairs)
        batches = [self.accel.upload(b.inputs) for b in prep.batches]
        self.accel.synchronize()

        def run(inputs) -> None:
            with torch.inference_mode():
                self._forward(inputs).float().softmax(-1)

        started = time.perf_counter()
        if self._pool is None:
            for inputs in batches:
                run(inputs)
        else:
            wait([self._pool.submit(run, inputs) for inputs in batches])
        self.accel.synchronize()
        return time.perf_counter() - started

    def stats(self) -> dict:
        c = dict(self._counts)
        c["padding_efficiency"] = c["tokens"] / c["padded_tokens"] if c["padded_tokens"] else 1.0
        looked_up = c["cache_hits"] + c["cache_misses"]
        c["cache_hit_rate"] = c["cache_hits"] / looked_up if looked_up else 0.0
        c["cache_entries"] = len(self._cache) if self._cache is not None else 0
        c["token_budget"] = self._budget.current
        c["token_budget_max"] = self._budget.ceiling
        c["tokenizer_fallbacks"] = self.encoder.fallbacks
        c["device"] = self.device
        c["precision"] = self.precision
        c["batch_layout"] = self.layout
        c["lanes"] = self.lanes
        c["lane_threads"] = self.lane_threads
        return c

    @contextlib.contextmanager
    def inline(self) -> Iterator[None]:
        """Run the batches on the calling thread, one at a time, with one lane's threads: for a
        profiler, which follows only the thread that started it."""
        pool, threads = self._pool, torch.get_num_threads()
        self._pool = None
        torch.set_num_threads(self.lane_threads)
        try:
            yield
        finally:
            self._pool = pool
            torch.set_num_threads(threads)

    def close(self) -> None:
        """Let the lanes' threads go (after the batches they run)."""
        if self._pool is not None:
            self._pool.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the CPU half ---------------------------------------------------------------------

    def prepare(self, pairs: Sequence[tuple[str, str]]) -> Prepared:
        """Deduplicate, look up the cache, tokenize, plan and pad; no device work."""
        started = time.perf_counter()
        index: dict[tuple[str, str], int] = {}
        inverse = np.fromiter((index.setdefault(p, len(index)) for p in pairs),
                              dtype=np.int64, count=len(pairs))
        keys = list(index)
        c = self._counts
        c["pairs"] += len(pairs)
        c["deduplicated"] += len(pairs) - len(keys)
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
            c["cache_hits"] += len(cached)
            c["cache_misses"] += len(todo)
        enc = None
        batches: list[_Batch] = []
        if todo:
            enc = self.encoder.encode([keys[i] for i in todo])
            c["truncated"] += int(enc.truncated.sum())
            batches = [self._batch(enc, rows)
                       for rows in self._plan(enc.lengths, np.arange(len(todo)))]
        c["tokenize_seconds"] += time.perf_counter() - started
        return Prepared(len(pairs), inverse, keys, enc, np.asarray(todo, dtype=np.int64),
                        batches, cached)

    def _plan(self, lengths: np.ndarray, rows: np.ndarray) -> list[np.ndarray]:
        """`rows` cut into batches of at most a token budget each, longest pairs first."""
        if self._packed is None:
            return [rows[np.asarray(part, dtype=np.int64)] for part in plan_batches(
                lengths[rows].tolist(), self._budget.current, multiple=self._multiple)]
        # Packed: the budget counts real tokens; each batch is sorted for its attention groups.
        # The call is cut into equal batches, as many as a multiple of the lanes, so that no
        # lane is left with a larger share of it than another.
        rows = rows[np.argsort(-lengths[rows], kind="stable")]
        ends = np.cumsum(lengths[rows])
        total = int(ends[-1]) if len(ends) else 0
        budget = self._budget.current
        count = -(-max(1, -(-total // budget)) // self.lanes) * self.lanes
        cuts = np.searchsorted(ends, np.arange(1, count) * (total / count), side="right")
        parts = []
        for part in np.split(rows, cuts):
            # A cut may leave a part one pair over the budget: cut that one by the budget.
            while len(part) > 1 and lengths[part].sum() > budget:
                keep = max(1, int(np.searchsorted(np.cumsum(lengths[part]), budget, "right")))
                parts.append(part[:keep])
                part = part[keep:]
            if len(part):
                parts.append(part)
        return parts

    def _batch(self, enc: Encoded, rows: np.ndarray) -> _Batch:
        lengths = enc.lengths[rows]
        if self._packed is not None:
            inputs: Padded | Packed = Packed.build(*self.encoder.pack(enc, rows), lengths)
            cost = int(lengths.sum())
        else:
            width = round_up(int(lengths.max()), self._multiple)
            ids, types, mask = self.encoder.pad(enc, rows, width)
            # The attention mask goes in prepared (batch, 1, 1, width), the shape SDPA
            # broadcasts: given a 2-D mask, transformers checks on the device whether it pads
            # at all, a device-to-host sync before every batch. Without padding there is no
            # mask at all, which lets SDPA take its fastest kernel.
            attention = None if mask.all() else torch.from_numpy(
                mask.astype(bool)[:, None, None, :])
            inputs = Padded(torch.from_numpy(ids), torch.from_numpy(types), attention)
            cost = len(rows) * width
        return _Batch(rows, cost, self.accel.pin(inputs))

    # ---- the device half ------------------------------------------------------------------

    def forward(self, prep: Prepared) -> Rows:
        """Run every batch of `prep`; the results in the input order of its pairs."""
        uniq_probs = np.zeros((len(prep.keys), len(self.labels)), dtype=np.float64)
        uniq_trunc = np.zeros(len(prep.keys), dtype=bool)
        for i, hit in prep.cached:
            uniq_probs[i] = [hit.probs[label] for label in self.labels]
            uniq_trunc[i] = hit.truncated
        if prep.enc is not None:
            done: list[tuple[np.ndarray, torch.Tensor]] = []
            if self._pool is None:
                for batch in prep.batches:
                    self._run(prep.enc, batch, done)
            else:
                futures = [self._pool.submit(self._run, prep.enc, batch, [])
                           for batch in prep.batches]
                wait(futures)  # every batch finished before an error is raised
                for f in futures:
                    done += f.result()
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

    def _run(self, enc: Encoded, batch: _Batch, done: list) -> list:
        """One planned batch; split further when the budget shrank or memory ran out.
        Appends (rows, probs) of each part to `done`, and returns it."""
        pending = [batch]
        while pending:
            b = pending.pop()
            if b.cost > self._budget.current and len(b.rows) > 1:
                parts = self._plan(enc.lengths, b.rows)
                if len(parts) > 1:
                    pending.extend(self._batch(enc, p) for p in reversed(parts))
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
                parts = self._plan(enc.lengths, b.rows)
                if len(parts) == 1:
                    parts = np.array_split(b.rows, 2)
                pending.extend(self._batch(enc, p) for p in reversed(parts))
                continue
            done.append((b.rows, probs))
            self._record(len(b.rows), int(enc.lengths[b.rows].sum()), b.cost,
                         time.perf_counter() - started)
        return done

    def _probs(self, inputs: Padded | Packed) -> torch.Tensor:
        with record_function("mgeo.to_device"):
            inputs = self.accel.upload(inputs)
        with torch.inference_mode():
            # Named ranges for `mgeo bench --profile`; on CUDA, forward launches the kernels.
            with record_function("mgeo.forward"):
                logits = self._forward(inputs)
            return logits.float().softmax(-1)

    def _forward(self, inputs: Padded | Packed) -> torch.Tensor:
        """The model call; tests wrap it to inject faults."""
        with self.accel.running(inputs.ids.numel()):
            if isinstance(inputs, Packed):
                assert self._packed is not None
                return self._packed(inputs)
            return self.model(input_ids=inputs.ids, token_type_ids=inputs.types,
                              attention_mask=inputs.mask).logits

    def _out_of_memory(self, pairs: int, tokens: int) -> None:
        with self._count_lock:
            self._counts["oom_retries"] += 1
        self.accel.empty_cache()
        if pairs == 1:
            raise RuntimeError(f"out of {self.device} memory scoring a single pair of {tokens} "
                               "tokens; free memory on the device or lower --max-length")
        with self._count_lock:
            self._budget.shrink(tokens)
        log.warning("out of memory on a batch of %d pairs (%d tokens); token budget now %d, "
                    "retrying the same pairs", pairs, tokens, self._budget.current)

    def _record(self, pairs: int, tokens: int, padded: int, seconds: float) -> None:
        with self._count_lock:
            self._budget.success()
            c = self._counts
            c["batches"] += 1
            c["scored_pairs"] += pairs
            c["tokens"] += tokens
            c["padded_tokens"] += padded
        for observer in self._observers:
            observer.model_batch(pairs, tokens, padded, seconds)

    # ---- set-up ---------------------------------------------------------------------------

    def _prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        model.eval().requires_grad_(False)
        if self.precision == "int8":
            return quantize_int8(model)
        return model.to(device=self.accel.torch_device, dtype=torch_dtype(self.precision))

    def _resolve_layout(self, wanted: str) -> str:
        """packed where the model supports it and it is known to pay (auto: on a CPU), else
        padded."""
        reason = unsupported(self.model)
        if wanted == "packed" and reason is not None:
            raise ValueError(f"--batch-layout packed: {reason}; only BERT sequence "
                             "classifiers run packed, use --batch-layout padded (or auto)")
        if wanted == "auto":
            return "packed" if reason is None and self.device == "cpu" else "padded"
        return wanted

    def _startup_budget(self) -> int:
        if self.device != "cuda":
            return CPU_TOKEN_BUDGET
        return probe_budget(self.accel, self._dummy_forward, self.max_length,
                            self.memory_fraction)

    def _dummy_forward(self, rows: int, width: int) -> None:
        """A worst-case batch, padded as real batches are (so it runs the kernels they run)."""
        where = self.accel.torch_device
        ids = torch.full((rows, width), self.tokenizer.unk_token_id or 0, device=where)
        mask = torch.ones((rows, 1, 1, width), dtype=torch.bool, device=where)
        mask[..., -1] = False
        with torch.inference_mode():
            self._forward(Padded(ids, torch.zeros_like(ids), mask))
        self.accel.synchronize()
