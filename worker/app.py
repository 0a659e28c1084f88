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
        engine, processor, server = _start(s, state)
    except _StopBeforeStart as exc:
        log.info("%s while starting: stopped before reading anything", exc)
        return 0
    if processor is None:
        return 2
    try:
        code = processor.run()
    except Exception as exc:  # noqa: BLE001 - one line and exit 1, never a traceback
        log.error("mgeo worker stopped on an unexpected error: %s: %s", type(exc).__name__, exc)
        log.debug("details", exc_info=True)
        code = 1
    finally:
        if server is not None:
            server.stop()
    return _close(engine, processor, code)


MMAP_THRESHOLD = 4 << 20  # bytes: larger blocks are mmapped, and given back when freed
TRIM_EVERY = 10.0         # seconds between returns of the heap's free pages to the system


def _steady_heap() -> None:
    """Keep the process's memory from creeping up with torch's tensors (glibc only).

    glibc's malloc raises its mmap threshold to the largest block freed (up to 32 MiB), after
    which a batch's large tensors, of a different size every batch, come from the heap, whose
    free holes it keeps. bench/soak.py saw a CPU worker grow from 1.0 to 2.1 GB over 300,000
    pairs so. A fixed 4 MiB threshold keeps the largest tensors mmapped (given back when
    freed) and a trim every 10 s gives the free pages between the others back: the same run
    stays flat (docs/reliability.md). A lower threshold is flatter still but cost a third of
    the throughput on a 2-core CPU (every tensor freshly mapped). MALLOC_MMAP_THRESHOLD_ in
    the environment wins."""
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


def _close(engine, processor, code: int) -> int:
    """Close the engine, so that no thread of it is inside torch when the interpreter exits
    (that aborts the process: "terminate called without an active exception"). The processor
    has waited for the batch on the model to end; if it still runs, leave at once, without the
    interpreter's exit (consumer and producer are closed, nothing is left to write)."""
    from mgeo.worker.stream.processor import BATCH_GRACE

    if processor.stage is None or processor.stage.join(0):
        engine.close()
        return code
    log.warning("leaving while a model batch still runs (%.0fs after the stop); its requests "
                "are read again", BATCH_GRACE)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _start(s: WorkerSettings, state: dict):
    """Load the model and build the processor (and its metrics server); (None, None, None)
    when the model cannot be loaded, which is said in one line."""
    from mgeo.worker.inference.engine import Engine
    from mgeo.worker.stream.events import Stats
    from mgeo.worker.stream.health import HealthServer, loop_liveness
    from mgeo.worker.stream.metrics import Metrics
    from mgeo.worker.stream.processor import StreamProcessor
    from mgeo.worker.stream.scoring import Scorer

    try:
        engine = Engine.from_settings(s)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"mgeo worker: cannot load the model: {exc}", file=sys.stderr)
        return None, None, None
    log.info("model %s loaded on %s (%s, %s batches, %d lane(s) of %d thread(s)), labels %s, "
             "score = P(%s), token budget %d", engine.model_name, engine.device,
             engine.precision, engine.layout, engine.lanes, engine.lane_threads, engine.labels,
             " + ".join(engine.positive), engine.token_budget)
    stats = Stats()
    metrics = server = None
    if s.metrics_port is not None:
        metrics = Metrics(stats, engine.stats, lambda: processor.tracker.inflight,
                          queues=lambda: processor.stage.depths() if processor.stage else {})
        engine.add_observer(metrics)
    processor = StreamProcessor(s, Scorer(engine), observer=metrics, stats=stats)
    if metrics is not None:
        server = HealthServer(metrics.registry, s.metrics_port,
                              live=loop_liveness(stats, s.liveness_timeout),
                              ready=lambda: stats.ready, host=s.metrics_host).start()
    state["processor"] = processor
    return engine, processor, server
