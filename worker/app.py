"""`mgeo worker`: load the model, then run the Kafka loop until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import sys

from mgeo.settings import WorkerSettings

log = logging.getLogger("mgeo.worker")


def run(s: WorkerSettings) -> int:
    from worker.engine import Engine
    from worker.loop import StreamProcessor
    from worker.scoring import Scorer

    try:
        engine = Engine.from_settings(s)
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"mgeo worker: cannot load the model: {exc}", file=sys.stderr)
        return 2
    log.info("model %s loaded on %s (%s), labels %s, score = P(%s), token budget %d",
             engine.model_name, engine.device, engine.precision, engine.labels,
             " + ".join(engine.positive), engine.token_budget)
    processor = StreamProcessor(s, Scorer(engine))
    server = None
    if s.metrics_port is not None:
        from worker.metrics import HealthServer, Metrics

        metrics = Metrics(processor.stats, engine.stats, lambda: processor.tracker.inflight,
                          engine=engine)
        processor.observer = metrics
        server = HealthServer(metrics, s.metrics_port, s.liveness_timeout).start()

    signals = {"n": 0}

    def on_signal(signum, _frame):
        signals["n"] += 1
        if signals["n"] == 1:
            log.info("%s: stopping after the work in flight (again to stop sooner)",
                     signal.Signals(signum).name)
            processor.stop()
        else:
            processor.hurry()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        return processor.run()
    finally:
        if server is not None:
            server.stop()
