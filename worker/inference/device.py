"""Where the model runs and in which number format: the rules, in one place.

`auto` never makes a lossy choice the user did not ask for: fp16 on a GPU (its softmax still runs
in fp32), fp32 on a CPU. bf16 is allowed only where the hardware computes it; elsewhere torch
would emulate it, about 7x slower than fp32.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import torch


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no GPU; install a CUDA build of torch "
                         "and check the driver, or run with --device cpu")
    return device


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX-BF16)."""
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


def resolve_lanes(lanes: int | None, device: str, threads: int) -> int:
    """Batches the model runs at once on a CPU, each with `threads // lanes` torch threads.

    The threads of one batch meet at a barrier after every operator; with the small matrices of
    a small model or a small batch, and beside a busy broker or Python thread that can take a
    core away mid-operator, much of their time goes there. Independent batches on separate
    threads never wait for each other: on the 2-core CI machine two lanes of one thread scored
    the bundled model 1.1-1.6x faster than one lane of two, at every batch size. A big model's
    (BERT-base's) large matrices do split well over a few threads, which keeps a lone batch's
    latency low on a many-core host, so a lane may have up to 4. So auto is at least two lanes
    (where there are two threads), each of at most 4 threads. A GPU runs one.
    """
    if device != "cpu":
        if lanes not in (None, 1):
            raise ValueError(f"--lanes {lanes}: several batches at once run on a cpu only; on "
                             "a GPU, run more worker processes (--processes) instead")
        return 1
    if lanes is None:
        return min(threads, max(2, -(-threads // 4)))
    if lanes > threads:
        raise ValueError(f"--lanes {lanes} is more than the {threads} torch threads; each lane "
                         "needs one: lower --lanes or raise --threads")
    return lanes


def torch_dtype(precision: str) -> torch.dtype:
    """The weights' dtype of a resolved precision (int8 quantizes fp32 weights)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)


def resolve_positive(labels: Sequence[str], wanted: Sequence[str] | None) -> list[str]:
    """The labels whose probabilities sum to a pair's score."""
    if wanted:
        unknown = [w for w in wanted if w not in labels]
        if unknown:
            raise ValueError(f"positive label(s) {unknown} are not labels of the model; its "
                             f"labels are {list(labels)}")
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
