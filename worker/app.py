"""`mgeo worker`: load the model, then run the Kafka loop until SIGTERM/SIGINT.

This is where the two halves of the worker meet: the inference part (`mgeo.worker.inference`,
torch, no Kafka) and the stream part (`mgeo.worker.stream`, Kafka, no torch). With
--processes N it starts N such workers instead and supervises them (`processes.py`).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

from mgeo.settings import WorkerSettings

log = logging.getLogger("mgeo.worker")


class _StopBeforeStart(Exception):
    """SIGTERM/SIGINT came while the model was loading: there is nothing to drain."""


def run(s: WorkerSettings) -> int:
    if s.processes > 1:
        from mgeo.worker.processes import run_processes

        return run_processes(s)
    _steady_heap()
    state: dict = {"signals": 0, "processor": None}

    def on_signal(signum, _frame):
        state["signals"] += 1
        name = signal.Signals(signum).name
        processor = state["processor"]
        if processor is None:
            raise _StopBeforeStart(name)
        if state["signals"] == 1:
            log.info("%s: stopping after the work in flight (again to stop now)", name)
            processor.stop()
        else:
            log.info("%s again: leaving now; unanswered work will be read again", name)
            processor.hurry()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        worker = _start(s, state)
    except _StopBeforeStart as exc:
        log.info("%s while starting: stopped before reading anything", exc)
        return 0
    if worker is None:
        return 2
    code = worker.run()
    if worker.closed:
        return code
    logging.shutdown()  # a batch still runs in the engine: leave without the interpreter's exit
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


MMAP_THRESHOLD = 32 << 20  # bytes: larger blocks are mmapped, and given back when freed
TRIM_EVERY = 2.0          # seconds between returns of the heap's free pages to the system


def _steady_heap() -> None:
    """Keep the process's memory from creeping up with torch's tensors (glibc only).

    glibc's malloc raises its mmap threshold to the largest block freed (up to 32 MiB), after
    which a batch's large tensors, of a different size every batch, come from the heap, whose
    free holes it keeps. bench/soak.py saw a CPU worker grow from 1.0 to 2.1 GB over 300,000
    pairs so. The heap's free pages are now given back every 2 s (malloc_trim), and the
    threshold is fixed at 32 MiB (glibc's own ceiling) so the policy does not move under the
    worker: the soak stays between 0.6 and 0.9 GB (docs/reliability.md). A lower threshold is
    flatter still but costs throughput on a CPU (every tensor above it freshly mapped and
    zeroed each batch): 4 MiB cost a quarter of the backlog rate on the 2-core machine, 128 KiB
    a third. MALLOC_MMAP_THRESHOLD_ in the environment wins."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        return
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(-3, MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD

    def trim_now_and_then() -> None:
        never = threading.Event()
        while not never.wait(TRIM_EVERY):
            trim(0)

    threading.Thread(target=trim_now_and_then, name="heap-trim", daemon=True).start()


class Worker:
    """One worker in this process: the Kafka loop (its composed steps, stream/compose.py) over
    an engine, and its metrics server. It owns them all from the start: `run` serves until
    `stop` (or --max-messages, or a failure) and closes each of them on the way out, whatever
    the way, the engine included; a constructor that fails closes what it was given.

    The embedding API (`from mgeo.worker import Worker`): see the example in
    worker/__init__.py.
    """

    def __init__(self, settings: WorkerSettings, engine, *, clients=None):
        from mgeo.worker.stream.compose import compose
        from mgeo.worker.stream.events import Stats
        from mgeo.worker.stream.health import HealthServer, loop_liveness
        from mgeo.worker.stream.metrics import Metrics
        from mgeo.worker.stream.processor import StreamProcessor
        from mgeo.worker.stream.scoring import Scorer

        self.engine, self.closed = engine, False
        self.server = None
        try:
            stats = Stats()
            metrics = None
            if settings.metrics_port is not None:
                metrics = Metrics(stats, engine.stats, lambda: self.processor.tracker.inflight,
                                  queues=self._depths)
                engine.add_observer(metrics)
            # intake -> inference -> delivery, wired by compose once the producer is open
            self.processor = StreamProcessor(settings, Scorer(engine), observer=metrics,
                                             stats=stats, clients=clients, steps=compose)
            if metrics is not None:
                self.server = HealthServer(
                    metrics.registry, settings.metrics_port,
                    live=loop_liveness(stats, settings.liveness_timeout),
                    ready=lambda: stats.ready, host=settings.metrics_host).start()
        except BaseException:
            engine.close()
            self.closed = True
            raise

    @property
    def stats(self):
        return self.processor.stats

    def _depths(self) -> dict[str, int]:
        stage = self.processor.stage
        return stage.depths() if stage is not None else {}

    def stop(self) -> None:
        """Stop reading, finish and commit what was read, then `run` returns."""
        self.processor.stop()

    def hurry(self) -> None:
        """Leave now: commit what is answered; the rest is read again by the next owner."""
        self.processor.hurry()

    def run(self) -> int:
        """Serve until stopped; the exit code (0, or 1 after a failure, said in one line)."""
        try:
            code = self.processor.run()
        except Exception as exc:  # noqa: BLE001 - one line and exit 1, never a traceback
            log.error("mgeo worker stopped on an unexpected error: %s: %s",
                      type(exc).__name__, exc)
            log.debug("details", exc_info=True)
            code = 1
        finally:
            if self.server is not None:
                self.server.stop()
            self.close()
        return code

    def close(self) -> None:
        """Close the engine, so that no thread of it is inside torch when the interpreter
        exits (that aborts the process: "terminate called without an active exception"). The
        processor has waited for the batch on the model to end; while it still runs the
        engine stays open (`closed` False), and the CLI leaves without the interpreter's
        exit (consumer and producer are closed, nothing is left to write)."""
        from mgeo.worker.stream.processor import BATCH_GRACE

        if self.closed:
            return
        stage = self.processor.stage
        if stage is None or stage.join(0):
            self.engine.close()
            self.closed = True
            return
        log.warning("leaving while a model batch still runs (%.0fs after the stop); its "
                    "requests are read again", BATCH_GRACE)


def load_engine(s: WorkerSettings):
    """The engine of the settings, its model loaded and said in one line; None (and why, on
    stderr) when the model cannot be loaded."""
    from mgeo.worker.inference.engine import Engine

    try:
        engine = Engine.from_settings(s)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"mgeo worker: cannot load the model: {exc}", file=sys.stderr)
        return None
    log.info("model %s loaded on %s (%s, %s batches, %d lane(s) of %d thread(s)), labels %s, "
             "score = P(%s), token budget %d", engine.model_name, engine.device,
             engine.precision, engine.layout, engine.lanes, engine.lane_threads, engine.labels,
             " + ".join(engine.positive), engine.token_budget)
    return engine


def _start(s: WorkerSettings, state: dict) -> Worker | None:
    """Load the model and build the worker; None when the model cannot be loaded."""
    engine = load_engine(s)
    if engine is None:
        return None
    worker = None
    try:
        worker = Worker(s, engine)  # (closes the engine if it fails)
        state["processor"] = worker.processor
    except BaseException:  # a signal in between, too
        if worker is not None:
            worker.close()
        raise
    return worker
