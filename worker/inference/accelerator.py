"""What the engine asks of its device beyond tensor maths, behind one small interface.

A GPU host's engine pins batches, copies them without blocking, rounds widths for the tensor
cores, reads free memory for its token budget, counts peak memory and empties the allocator's
cache after an out-of-memory error. Every such call goes through an `Accelerator`, so the same
engine logic runs here on a CPU against `SimulatedGpu`, in the tests and in `bench/gpu-run
--cpu`, as on a real GPU with `Cuda`. `Accelerator` itself is the CPU: nothing to do.

What the simulation cannot show (the real allocator's fragmentation, kernels, pinned memory
itself, transfer overlap) is listed in docs/gpu.md.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator, TypeVar

import torch

T = TypeVar("T")  # a batch's inputs (engine.Padded or packed.Packed): anything with `.to`


class Accelerator:
    """The CPU: tensors stay where they are, and there is no device memory to count."""

    name = "cpu"          # the device the engine reports, and by which device.py's rules go
    torch_device = "cpu"  # where the model's tensors live
    width_multiple = 1    # padded widths round up to this

    def pin(self, inputs: T) -> T:
        """A batch laid out on the preparing thread, ready for a non-blocking copy."""
        return inputs

    def upload(self, inputs: T) -> T:
        """A batch on the device (from pinned memory: without blocking the host)."""
        return inputs

    def synchronize(self) -> None:
        """Wait for the work queued on the device."""

    def empty_cache(self) -> None:
        """Give the memory the allocator holds but no tensor uses back to the device."""

    def free_memory(self) -> int | None:
        """Bytes free on the device (None: no device memory to budget)."""
        return None

    def reset_peak(self) -> None:
        """Start a new peak of `peak_memory`."""

    def allocated(self) -> int:
        """Bytes that live tensors of this process hold on the device."""
        return 0

    def peak_memory(self) -> int | None:
        """The most bytes allocated since `reset_peak` (None: not counted)."""
        return None

    @contextlib.contextmanager
    def running(self, tokens: int) -> Iterator[None]:
        """Around one model call of `tokens` tokens (a simulated device counts its memory)."""
        yield

    def occupy(self, nbytes: int) -> Callable[[], None]:
        """Hold `nbytes` of device memory, as another tenant of the GPU would; returns the
        function that gives it back."""
        raise ValueError(f"{self.name} has no device memory to occupy")


class Cuda(Accelerator):
    """torch.cuda: pinned batches copied without blocking, widths of multiples of 8 for the
    tensor cores, the caching allocator's statistics."""

    name = torch_device = "cuda"
    width_multiple = 8

    def pin(self, inputs: T) -> T:
        return inputs.to(self.torch_device, pin=True)  # type: ignore[attr-defined]

    def upload(self, inputs: T) -> T:
        return inputs.to(self.torch_device)  # type: ignore[attr-defined]

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def free_memory(self) -> int:
        return int(torch.cuda.mem_get_info()[0])

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats()

    def allocated(self) -> int:
        return int(torch.cuda.memory_allocated())

    def peak_memory(self) -> int:
        return int(torch.cuda.max_memory_allocated())

    def occupy(self, nbytes: int) -> Callable[[], None]:
        held = [torch.empty(nbytes, dtype=torch.uint8, device=self.torch_device)]

        def release() -> None:
            held.clear()
            torch.cuda.empty_cache()

        return release


def accelerator_for(device: str) -> Accelerator:
    """The accelerator of a resolved device ("cpu" or "cuda")."""
    return Cuda() if device == "cuda" else Accelerator()


class SimulatedGpu:
    """One GPU's memory, simulated: `total` bytes shared by every `Simulated` accelerator made
    on it (the worker processes of `--processes N` on one card), and what a model call costs:
    `bytes_per_token` of activations a token."""

    def __init__(self, total: int, bytes_per_token: int = 40_000):
        self.total = self.free = total
        self.bytes_per_token = bytes_per_token
        self.lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self.lock:
            if nbytes > self.free:
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory (simulated). Tried to allocate {nbytes / 2**20:.1f} "
                    f"MiB; {self.free / 2**20:.1f} MiB free of {self.total / 2**20:.1f} MiB")
            self.free -= nbytes

    def give(self, nbytes: int) -> None:
        with self.lock:
            self.free += nbytes


class Simulated(Accelerator):
    """A process's view of a `SimulatedGpu`, on the CPU: CUDA's rules (the engine sees device
    "cuda", so fp16 by default, one lane, padded batches, a start-up budget from free memory)
    and the caching allocator's bookkeeping: memory a model call needed stays reserved by this
    process after it, until `empty_cache`; a call that needs more than this process reserved
    plus what the GPU has free raises torch.OutOfMemoryError, as CUDA does. Counts the calls
    of each kind, for tests."""

    name = "cuda"
    torch_device = "cpu"
    width_multiple = 8

    def __init__(self, gpu: SimulatedGpu):
        self.gpu = gpu
        self.reserved = self._allocated = self._peak = 0
        self.calls = dict.fromkeys(("pin", "upload", "synchronize", "empty_cache", "oom"), 0)

    def pin(self, inputs: T) -> T:
        self.calls["pin"] += 1
        return inputs

    def upload(self, inputs: T) -> T:
        self.calls["upload"] += 1
        return inputs

    def synchronize(self) -> None:
        self.calls["synchronize"] += 1

    def empty_cache(self) -> None:
        self.calls["empty_cache"] += 1
        self.gpu.give(self.reserved - self._allocated)
        self.reserved = self._allocated

    def free_memory(self) -> int:
        return self.gpu.free

    def reset_peak(self) -> None:
        self._peak = self._allocated

    def allocated(self) -> int:
        return self._allocated

    def peak_memory(self) -> int:
        return self._peak

    @contextlib.contextmanager
    def running(self, tokens: int) -> Iterator[None]:
        need = tokens * self.gpu.bytes_per_token
        grow = self._allocated + need - self.reserved
        if grow > 0:
            try:
                self.gpu.take(grow)
            except torch.OutOfMemoryError:
                self.calls["oom"] += 1
                raise
            self.reserved += grow
        self._allocated += need
        self._peak = max(self._peak, self._allocated)
        try:
            yield
        finally:
            self._allocated -= need

    def occupy(self, nbytes: int) -> Callable[[], None]:
        self.gpu.take(nbytes)
        return lambda: self.gpu.give(nbytes)
