"""The worker's steps composed: intake → inference → delivery (the contract: step.py).

    Kafka loop ──msgs──▶ Intake ──Unit──▶ InferenceStage ──Unit──▶ Delivery ──▶ producer
    (processor.py)       (intake.py)      (inference.py)           (delivery.py, transactions.py)
                                                                       │
    Kafka loop ◀──────────── what is final (settled), commit ──────────┘

Every step takes work by `submit` and hands it to the next one, which it is given; what passes
between them is immutable (`intake.Unit`, a new one at each change). The Kafka loop calls
`poll` every tick, `close` when nothing more will come, and `join` to wait for the end. Steps
never build, read or write one another: `compose` wires them, once, and each reports moves of
its work to the loop through `moved` and its failures through `on_failure`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from mgeo.logs import RateLimitedLog
from mgeo.settings import WorkerSettings
from mgeo.worker.stream.answers import Answers, Replacements
from mgeo.worker.stream.delivery import AtLeastOnce, Delivery
from mgeo.worker.stream.events import Control, Observer, Stats
from mgeo.worker.stream.inference import InferenceStage
from mgeo.worker.stream.intake import Intake
from mgeo.worker.stream.offsets import OffsetTracker
from mgeo.worker.stream.scoring import Scorer
from mgeo.worker.stream.transactions import ExactlyOnce

log = logging.getLogger("mgeo.worker")


@dataclass(frozen=True)
class Steps:
    """The composed steps, first to last, as the Kafka loop holds them."""

    intake: Intake
    inference: InferenceStage
    delivery: Delivery


@dataclass(frozen=True)
class Wiring:
    """What the steps are built from: the loop's shared pieces and the opened producer."""

    settings: WorkerSettings
    scorer: Scorer
    producer: Any
    tracker: OffsetTracker
    stats: Stats
    control: Control
    observer: Observer | None = None


def compose(w: Wiring) -> Steps:
    """intake → inference → delivery (at-least-once or exactly-once, by the settings)."""
    s, control = w.settings, w.control
    replacements = Replacements()
    answers = Answers(output_topic=s.output_topic, dlq_topic=s.dlq_topic,
                      model_name=w.scorer.model_name, stats=w.stats, tracker=w.tracker,
                      ratelog=RateLimitedLog(log))
    if s.delivery == "exactly-once":
        delivery: Delivery = ExactlyOnce(
            w.producer, tracker=w.tracker, answers=answers, replacements=replacements,
            on_failure=control.fail, moved=control.notify,
            # A transactional call blocks the loop: stay well inside max.poll.interval.ms,
            # and inside the drain's deadline when stopping.
            txn_deadline=lambda: control.bounded(min(s.shutdown_timeout,
                                                     s.max_poll_interval_ms / 2000)),
            transactional_id=s.transactional_id_or_default(), stop=control.stopping)
    else:
        delivery = AtLeastOnce(w.producer, tracker=w.tracker, answers=answers,
                               on_failure=control.fail, moved=control.notify)
    inference = InferenceStage(w.scorer, delivery, tracker=w.tracker, stats=w.stats,
                               max_pairs=s.max_batch_pairs, on_failure=control.fail,
                               moved=control.notify, observer=w.observer)
    intake = Intake(
        inference, topic=s.input_topic, output_topic=s.output_topic, dlq_topic=s.dlq_topic,
        max_bytes=s.max_request_bytes, max_chars=s.max_address_chars,
        dead_letter_window=s.dead_letter_window,
        max_dead_letter_ratio=s.max_dead_letter_ratio, error_value=w.scorer.error,
        tracker=w.tracker, stats=w.stats, replacements=replacements)
    return Steps(intake, inference, delivery)


ComposeSteps = Callable[[Wiring], Steps]
