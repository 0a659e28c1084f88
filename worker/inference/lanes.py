"""The engine's lanes on a CPU: threads that each run one model batch at a time, with a share of
the torch threads of their own (the rule for how many is `device.resolve_lanes`)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future

import torch


class Lanes:
    """Threads that each run one task at a time with `threads` torch threads of their own.
    Daemons: a worker told to leave now does not wait for a batch in progress."""

    def __init__(self, n: int, threads: int):
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._loop, args=(threads,),
                                          name=f"mgeo-lane-{i}", daemon=True) for i in range(n)]
        for t in self._threads:
            t.start()

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._tasks.put((future, fn, args))
        return future

    def close(self, timeout: float = 60.0) -> None:
        """Stop the threads once their tasks are done, and wait for them: a thread of torch
        still ending while the interpreter exits can abort the process ("terminate called
        without an active exception")."""
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join(timeout)

    def _loop(self, threads: int) -> None:
        torch.get_num_threads()  # torch sets a new thread's count on first use: do it now
        torch.set_num_threads(threads)
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # noqa: BLE001 - the caller's to handle
                    future.set_exception(exc)
