"""Where the engine's batches run, behind one interface (`Runner.map`):

- `Inline`: on the calling thread, one at a time; a GPU's (its kernels queue on one stream),
  and a profiler's, which follows only the thread that started it;
- `Lanes` (a CPU's): threads that each run one batch at a time with a share of the torch
  threads of their own (the rule for how many is `device.resolve_lanes`), so that independent
  batches never wait for each other at an operator's barrier.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, wait
from typing import Callable, Iterable, Protocol, TypeVar

import torch

from mgeo.worker.inference.device import resolve_lanes

T = TypeVar("T")
R = TypeVar("R")


class Runner(Protocol):
    lanes: int    # batches that run at once
    threads: int  # torch threads of each

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """`fn` of every item, in order; every item finished before an error is raised."""

    def close(self) -> None:
        """Let the runner's threads go (after the batches they run)."""


class Inline:
    """Runs on the calling thread. With `scoped`, sets the calling thread's torch threads to
    `threads` for the duration of each `map` (a profiler standing in for one lane)."""

    lanes = 1

    def __init__(self, threads: int, *, scoped: bool = False):
        self.threads = threads
        self._scoped = scoped

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        if not self._scoped:
            return [fn(item) for item in items]
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return [fn(item) for item in items]
        finally:
            torch.set_num_threads(before)

    def close(self) -> None:
        pass


class Lanes:
    """Threads that each run one task at a time with `threads` torch threads of their own.
    Daemons: a worker told to leave now does not wait for a batch in progress."""

    def __init__(self, n: int, threads: int):
        self.lanes, self.threads = n, threads
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, name=f"mgeo-lane-{i}", daemon=True)
                         for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., R], *args) -> "Future[R]":
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        futures = [self.submit(fn, item) for item in items]
        wait(futures)  # every task finished before an error is raised
        return [f.result() for f in futures]

    def alive(self) -> int:
        """How many of the lanes' threads are still running."""
        return sum(t.is_alive() for t in self._threads)

    def close(self, timeout: float = 60.0) -> None:
        """Stop the threads once their tasks are done, and wait for them: a thread of torch
        still ending while the interpreter exits can abort the process ("terminate called
        without an active exception")."""
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join(timeout)

    def _loop(self) -> None:
        torch.get_num_threads()  # torch sets a new thread's count on first use: do it now
        torch.set_num_threads(self.threads)
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - the caller's to handle
                    future.set_exception(exc)


def runner_for(device: str, lanes: int | None = None, threads: int | None = None) -> Runner:
    """The runner of a resolved device: lanes on a CPU (`device.resolve_lanes`), inline on a
    GPU, where `threads` (when given) are the host-side operators' of the process."""
    total = threads or torch.get_num_threads()
    n = resolve_lanes(lanes, device, total)
    if device == "cpu":
        return Lanes(n, max(1, total // n))
    if threads:
        torch.set_num_threads(threads)
    return Inline(total)
