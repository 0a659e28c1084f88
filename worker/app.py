"""`mgeo worker`: load the model, then run the Kafka loop until SIGTERM/SIGINT.

This is where the two halves of the worker meet: the inference part (`mgeo.worker.inference`,
torch, no Kafka) and the stream part (`mgeo.worker.stream`, Kafka, no torch). With
--processes N it starts N such workers instead and supervises them (`processes.py`).
"""

from __future__ import annotations

import logging
import signal
import sys

from mgeo.settings import WorkerSettings

log = logging.getLogger("mgeo.worker")


class _StopBeforeStart(Exception):
    """SIGTERM/SIGINT came while the model was loading: there is nothing to drain."""


def run(s: WorkerSettings) -> int:
    if s.processes > 1:
        from mgeo.worker.processes import run_processes

        return run_processes(s)
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
        processor, server = _start(s, state)
    except _StopBeforeStart as exc:
        log.info("%s while starting: stopped before reading anything", exc)
        return 0
    if processor is None:
        return 2
    try:
        return processor.run()
    except Exception as exc:  # noqa: BLE001 - one line and exit 1, never a traceback
        log.error("mgeo worker stopped on an unexpected error: %s: %s", type(exc).__name__, exc)
        log.debug("details", exc_info=True)
        return 1
    finally:
        if server is not None:
            server.stop()


def _start(s: WorkerSettings, state: dict):
    """Load the model and build the processor (and its metrics server); (None, None) when the
    model cannot be loaded, which is said in one line."""
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
        return None, None
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
    return processor, server
