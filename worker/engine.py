"""The inference engine: address pairs in, label probabilities out, as fast as the device allows.

It knows nothing of Kafka. What makes it fast, biggest effect first: batches cut by a token
budget over length-sorted pairs (little padding, large batches of short pairs), fp16 on a GPU
with the softmax in fp32, tokenizing the next batch on a thread while the model runs the current
one, SDPA attention, and scoring identical pairs once. What keeps it alive: a CUDA
out-of-memory error halves the budget and retries the same pairs.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch.profiler import record_function

from worker.batcher import AdaptiveBudget, plan_batches, round_up

if TYPE_CHECKING:
    from mgeo.settings import ModelSettings

log = logging.getLogger(__name__)

CPU_TOKEN_BUDGET = 8192
# The start-up probe never goes beyond this: larger batches gain nothing measurable on a GPU
# and only lengthen the latency of a batch. An explicit --token-budget may go higher.
GPU_TOKEN_BUDGET_CAP = 131_072
_OOM = (torch.OutOfMemoryError,)


@dataclass(slots=True)
class Scored:
    """One pair's result. Shared between identical pairs and the cache: treat it as read-only."""

    probs: dict[str, float]  # every label of the model -> probability (softmax in fp32)
    truncated: bool  # True when the pair was cut to max_length tokens


@dataclass(slots=True)
class _Batch:
    """Tokenized pairs on the CPU; `keys` index the unique pairs of the current call."""

    keys: list[int]
    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]
    truncated: list[bool]


class _LRU:
    """A small least-recently-used map of pair -> Scored."""

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[tuple[str, str], Scored] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Scored | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: Scored) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no GPU; install a CUDA build of torch "
                         "and check the driver, or run with --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16). Elsewhere torch
    emulates bf16, about 7x slower than fp32."""
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # a torch without cpuinfo capabilities
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def _cuda_has_native_bf16() -> bool:
    try:  # torch >= 2.3 counts emulated bf16 unless told not to
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:
        return torch.cuda.is_bf16_supported()


def resolve_precision(precision: str, device: str) -> str:
    """auto is fp16 on cuda and fp32 on cpu: never a lossy choice the user did not make."""
    if precision == "auto":
        return "fp16" if device == "cuda" else "fp32"
    if precision == "fp16" and device != "cuda":
        raise ValueError("--precision fp16 runs on cuda only; on cpu use fp32, int8 or (on a "
                         "CPU with native bf16) bf16")
    if precision == "bf16":
        if device == "cuda" and not _cuda_has_native_bf16():
            raise ValueError("--precision bf16: this GPU has no bf16 (it needs Ampere or "
                             "newer); use fp16")
        if device == "cpu" and not cpu_has_native_bf16():
            raise ValueError("--precision bf16: this CPU has no native bf16 (AVX512-BF16 or "
                             "AMX), so torch would emulate it, about 7x slower than fp32; use "
                             "fp32 or int8")
    if precision == "int8" and device != "cpu":
        raise ValueError("--precision int8 (dynamic quantization) runs on cpu only; on cuda "
                         "use fp16 or fp32")
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The weights' dtype of a resolved precision (int8 quantizes fp32 weights)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def resolve_positive(labels: list[str], wanted: Sequence[str] | None) -> list[str]:
    """The labels whose probabilities sum to a pair's score."""
    if wanted:
        unknown = [w for w in wanted if w not in labels]
        if unknown:
            raise ValueError(f"positive label(s) {unknown} are not labels of the model; its "
                             f"labels are {labels}")
        return list(dict.fromkeys(wanted))
    if "exact_match" in labels:
        return ["exact_match"]
    return [labels[1] if len(labels) > 1 else labels[0]]


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every nn.Linear (weights int8, activations per batch).

    torch 2.13 still ships `torch.ao.quantization.quantize_dynamic` but marks it deprecated in
    favour of torchao; it is the CPU path that works without extra packages, so its warnings
    are silenced here and its absence is reported plainly.
    """
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:
        raise ValueError("--precision int8 needs torch.ao.quantization.quantize_dynamic, which "
                         "this torch lacks; use --precision fp32") from exc
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated")
        return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _chars(text: str) -> int:
    """Characters that become tokens: whitespace is dropped by BERT's tokenizer."""
    return len("".join(text.split()))


class Engine:
    """Scores address pairs with a sequence-classification model.

    `score()` may be called from one thread at a time (a lock enforces it); it tokenizes on a
    helper thread of its own.
    """

    def __init__(self, tokenizer, model, id2label: dict[int, str], *, device: str = "auto",
                 precision: str = "auto", max_length: int = 128, token_budget: int | None = None,
                 memory_fraction: float = 0.8, cache_size: int = 0,
                 positive_labels: Sequence[str] | None = None, model_name: str = "model",
                 grow_after: int = 32):
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.labels = [id2label[i] for i in range(len(id2label))]
        self.positive = resolve_positive(self.labels, positive_labels)
        self.model_name = model_name
        self.max_length = max_length
        self.memory_fraction = memory_fraction
        self.tokenizer = tokenizer
        self.model = self._prepare(model)
        # Tensor cores run fp16 matrix products best on multiples of 8.
        self._multiple = 8 if self.device == "cuda" else 1
        start = token_budget or self._startup_budget()
        self._budget = AdaptiveBudget(start, floor=round_up(max_length, self._multiple),
                                      grow_after=grow_after)
        self._cache = _LRU(cache_size) if cache_size > 0 else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mgeo-tokenize")
        self._lock = threading.Lock()
        self.recent_batches: deque[tuple[int, int, float]] = deque(maxlen=10_000)
        self._counts = dict.fromkeys(
            ("batches", "pairs", "scored_pairs", "tokens", "padded_tokens", "deduplicated",
             "cache_hits", "cache_misses", "oom_retries", "truncated"), 0)
        self._counts["tokenize_seconds"] = 0.0

    @classmethod
    def from_settings(cls, s: "ModelSettings") -> "Engine":
        from worker.model import default_model_dir, load_model

        if getattr(s, "threads", None):
            torch.set_num_threads(s.threads)
        path = Path(s.model) if s.model else default_model_dir()
        tokenizer, model, id2label = load_model(path)
        return cls(tokenizer, model, id2label, device=s.device, precision=s.precision,
                   max_length=s.max_length, token_budget=s.token_budget,
                   memory_fraction=s.memory_fraction, cache_size=s.cache_size,
                   positive_labels=s.positive_labels, model_name=path.resolve().name)

    # ---- public surface -------------------------------------------------------------------

    @property
    def token_budget(self) -> int:
        return self._budget.current

    def score(self, pairs: Sequence[tuple[str, str]]) -> list[Scored]:
        """Probabilities for each (addr1, addr2), in input order; raises only on systemic failure."""
        with self._lock:
            slots: dict[tuple[str, str], list[int]] = {}
            for i, (a, b) in enumerate(pairs):
                slots.setdefault((a, b), []).append(i)
            self._counts["pairs"] += len(pairs)
            self._counts["deduplicated"] += len(pairs) - len(slots)
            out: list[Scored | None] = [None] * len(pairs)
            todo: list[tuple[str, str]] = []
            for key, where in slots.items():
                hit = self._cache.get(key) if self._cache is not None else None
                if hit is None:
                    todo.append(key)
                    continue
                self._counts["cache_hits"] += 1
                for i in where:
                    out[i] = hit
            if self._cache is not None:
                self._counts["cache_misses"] += len(todo)
            for key, result in zip(todo, self._score_unique(todo)):
                if self._cache is not None:
                    self._cache.put(key, result)
                for i in slots[key]:
                    out[i] = result
            return out  # type: ignore[return-value]

    def stats(self) -> dict:
        c = dict(self._counts)
        c["padding_efficiency"] = c["tokens"] / c["padded_tokens"] if c["padded_tokens"] else 1.0
        looked_up = c["cache_hits"] + c["cache_misses"]
        c["cache_hit_rate"] = c["cache_hits"] / looked_up if looked_up else 0.0
        c["cache_entries"] = len(self._cache) if self._cache is not None else 0
        c["token_budget"] = self._budget.current
        c["token_budget_max"] = self._budget.ceiling
        c["device"] = self.device
        c["precision"] = self.precision
        return c

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- set-up ---------------------------------------------------------------------------

    def _prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        model.eval().requires_grad_(False)
        if self.precision == "int8":
            return quantize_int8(model)
        return model.to(device=self.device, dtype=torch_dtype(self.precision))

    def _startup_budget(self) -> int:
        if self.device != "cuda":
            return CPU_TOKEN_BUDGET
        return self._probe_cuda_budget()

    def _probe_cuda_budget(self) -> int:
        """The largest budget whose worst-case batch fits in `memory_fraction` of free memory.

        Measures the activation memory of a small batch of max_length pairs, extrapolates to
        the free memory, then proves the estimate by running a full worst-case batch (halving
        on out-of-memory). Worst case = every pair max_length tokens, the costliest per token.
        """
        width = round_up(self.max_length, 8)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self._dummy_forward(8, width)
        per_token = max(1.0, (torch.cuda.max_memory_allocated() - base) / (8 * width))
        budget = int(free * self.memory_fraction / per_token)
        budget = max(width, min(GPU_TOKEN_BUDGET_CAP, budget // width * width))
        while True:
            try:
                self._dummy_forward(budget // width, width)
                break
            except _OOM:
                pass  # recover outside the except block, so the failed graph is freed
            torch.cuda.empty_cache()
            if budget <= width:
                raise RuntimeError("not even one pair of max_length tokens fits in GPU memory; "
                                   "free the GPU or lower --max-length")
            budget = max(width, budget // 2 // width * width)
        log.info("token budget %d (%.1f KiB of activations a token, %.1f GiB free)", budget,
                 per_token / 1024, free / 2**30)
        return budget

    def _dummy_forward(self, rows: int, width: int) -> None:
        ids = torch.full((rows, width), self.tokenizer.unk_token_id or 0, device=self.device)
        zeros = torch.zeros_like(ids)
        with torch.inference_mode():
            self._forward(ids, zeros, torch.ones_like(ids))
        torch.cuda.synchronize()

    # ---- scoring --------------------------------------------------------------------------

    def _forward(self, input_ids, token_type_ids, attention_mask) -> torch.Tensor:
        """The model call; tests wrap it to inject faults."""
        return self.model(input_ids=input_ids, token_type_ids=token_type_ids,
                          attention_mask=attention_mask).logits

    def _score_unique(self, keys: list[tuple[str, str]]) -> list[Scored]:
        if not keys:
            return []
        # Plan with a cheap estimate (a Chinese character is a token); tokenizing happens per
        # batch on the helper thread, one batch ahead of the model.
        estimate = [min(self.max_length, _chars(a) + _chars(b) + 3) for a, b in keys]
        plan = iter(plan_batches(estimate, self._budget.current, multiple=self._multiple))
        results: list[Scored | None] = [None] * len(keys)
        ahead: deque[Future] = deque()

        def prefetch() -> None:
            idx = next(plan, None)
            if idx is not None:
                ahead.append(self._pool.submit(self._tokenize, keys, idx))

        prefetch()
        try:
            while ahead:
                batch = ahead.popleft().result()
                prefetch()
                self._run(batch, results)
        finally:
            for f in ahead:
                f.cancel()
        return results  # type: ignore[return-value]

    def _tokenize(self, keys: list[tuple[str, str]], idx: list[int]) -> _Batch:
        """MGeo's own inputs: `tokenizer(a, b, truncation=True, max_length=...)`, padded."""
        started = time.perf_counter()
        try:
            return self._tokenize_batch(keys, idx)
        finally:
            # Only this (single) tokenizer thread writes it; stats() reads it for the metrics
            # and `mgeo bench --profile`.
            self._counts["tokenize_seconds"] += time.perf_counter() - started

    def _tokenize_batch(self, keys: list[tuple[str, str]], idx: list[int]) -> _Batch:
        first = [keys[i][0] for i in idx]
        second = [keys[i][1] for i in idx]
        enc = self.tokenizer(first, second, truncation=True, max_length=self.max_length,
                             padding=True, pad_to_multiple_of=self._multiple if
                             self._multiple > 1 else None, return_tensors="pt",
                             return_token_type_ids=True, return_attention_mask=True)
        lengths = enc["attention_mask"].sum(1).tolist()
        truncated = [False] * len(idx)
        # Only a pair that fills max_length can have been cut: re-tokenize just those, uncut.
        full = [j for j, n in enumerate(lengths) if n >= self.max_length]
        if full:
            whole = self.tokenizer([first[j] for j in full], [second[j] for j in full],
                                   truncation=False, verbose=False,
                                   return_token_type_ids=False,
                                   return_attention_mask=False)["input_ids"]
            for j, ids in zip(full, whole):
                truncated[j] = len(ids) > self.max_length
        tensors = [enc["input_ids"], enc["token_type_ids"], enc["attention_mask"]]
        if self.device == "cuda":
            tensors = [t.pin_memory() for t in tensors]
        return _Batch(idx, *tensors, lengths, truncated)

    def _run(self, batch: _Batch, results: list[Scored | None]) -> None:
        """Score one tokenized batch, split further when the budget shrank or memory ran out."""
        pending = [list(range(len(batch.keys)))]
        while pending:
            rows = pending.pop()
            lengths = [batch.lengths[r] for r in rows]
            parts = plan_batches(lengths, self._budget.current, multiple=self._multiple)
            if len(parts) > 1:
                pending.extend([rows[j] for j in part] for part in reversed(parts))
                continue
            width = round_up(max(lengths), self._multiple)
            started = time.perf_counter()
            try:
                probs = self._probs(batch, rows, width)
            except _OOM:
                probs = None  # handled outside the except block, so the failed graph is freed
            if probs is None:
                self._out_of_memory(len(rows), len(rows) * width)
                pending.append(rows)
                continue
            self._budget.success()
            self._record(len(rows), sum(lengths), len(rows) * width,
                         time.perf_counter() - started)
            for r, p in zip(rows, probs):
                results[batch.keys[r]] = Scored(dict(zip(self.labels, p)), batch.truncated[r])
                self._counts["truncated"] += batch.truncated[r]

    def _probs(self, batch: _Batch, rows: list[int], width: int) -> list[list[float]]:
        if len(rows) == len(batch.keys) and width == batch.input_ids.shape[1]:
            tensors = (batch.input_ids, batch.token_type_ids, batch.attention_mask)
        else:
            sel = torch.tensor(rows)
            tensors = tuple(t[sel, :width] for t in
                            (batch.input_ids, batch.token_type_ids, batch.attention_mask))
        if self.device != "cpu":
            with record_function("mgeo.to_device"):
                tensors = tuple(t.to(self.device, non_blocking=True) for t in tensors)
        with torch.inference_mode():
            # Named ranges for `mgeo bench --profile`; on CUDA, forward launches the kernels
            # and to_host mostly waits for them.
            with record_function("mgeo.forward"):
                logits = self._forward(*tensors)
            with record_function("mgeo.to_host"):
                return logits.float().softmax(-1).cpu().tolist()

    def _out_of_memory(self, pairs: int, tokens: int) -> None:
        self._counts["oom_retries"] += 1
        if self.device == "cuda":
            torch.cuda.empty_cache()
        if pairs == 1:
            raise RuntimeError(f"out of {self.device} memory scoring a single pair of {tokens} "
                               "tokens; free memory on the device or lower --max-length")
        self._budget.shrink(tokens)
        log.warning("out of memory on a batch of %d pairs (%d tokens); token budget now %d, "
                    "retrying the same pairs", pairs, tokens, self._budget.current)

    def _record(self, pairs: int, tokens: int, padded: int, seconds: float) -> None:
        c = self._counts
        c["batches"] += 1
        c["scored_pairs"] += pairs
        c["tokens"] += tokens
        c["padded_tokens"] += padded
        self.recent_batches.append((pairs, padded, seconds))
