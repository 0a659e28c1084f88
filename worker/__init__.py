"""The worker: the Kafka loop (`mgeo.worker.stream`, no torch) over the inference engine
(`mgeo.worker.inference`, no Kafka), composed and closed by `Worker` (worker/app.py).

To run the worker loop in your own process (tests/test_embedding.py runs this example)::

    from mgeo.worker import Engine, Worker, WorkerSettings

    settings = WorkerSettings(bootstrap_servers="127.0.0.1:9092", input_topic="requests",
                              output_topic="results", dlq_topic="requests.dlq",
                              group_id="my-app", device="cpu", max_messages=10)
    worker = Worker(settings, Engine.from_settings(settings))
    # Serves until 10 messages are answered (max_messages), worker.stop() from another
    # thread (your shutdown hook), or a failure; the engine is closed on the way out.
    code = worker.run()
    assert code == 0 and worker.closed

`Worker.stop()` drains (finishes and commits what was read), `Worker.hurry()` leaves at once
(what is unanswered is read again by the next owner). Every option is a `WorkerSettings`
field (`mgeo worker --help` lists them with their MGEO_... variables).

The names are imported when first used, so importing `mgeo.worker` imports no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["Engine", "Worker", "WorkerSettings", "load_engine"]

_HOMES = {"Engine": "mgeo.worker.inference.engine", "Worker": "mgeo.worker.app",
          "WorkerSettings": "mgeo.settings", "load_engine": "mgeo.worker.app"}

if TYPE_CHECKING:
    from mgeo.settings import WorkerSettings
    from mgeo.worker.app import Worker, load_engine
    from mgeo.worker.inference.engine import Engine


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'mgeo.worker' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
