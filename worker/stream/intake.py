"""From the messages of one poll to a `Unit`: requests to score and answers known at once.

Every message of a partition we own gets exactly one answer: a result (scored later), an error
result (a request with a usable id that cannot be scored) or a dead letter (no usable id).
Messages of partitions that are not (or no longer) ours are dropped: their owner answers them.
A topic that is mostly dead letters stops the worker instead of being drained (`FatalStop`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from mgeo import wire
from mgeo.worker.stream.answers import Replacements
from mgeo.worker.stream.events import Stats
from mgeo.worker.stream.offsets import OffsetTracker, Segment
from mgeo.worker.stream.step import Step

log = logging.getLogger("mgeo.worker")


class FatalStop(RuntimeError):
    """A condition under which the worker must stop rather than go on answering."""


_NOTHING: Mapping = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Unit:
    """The messages of one poll (of the partitions we own), on their way to being answered.
    Immutable: a step that changes it hands on a new one (`dataclasses.replace`).

    `answers` maps a message's index to (topic, value, headers, key) for the answers known at
    intake; `values` holds one result value per request once scored (`failed`: those that are
    error results because the model failed on the pair); `replace` maps a message's index to
    why its answer could not be written before (exactly-once rewinds after such a failure):
    that answer is sent as its bounded substitute instead.
    """

    msgs: tuple[Any, ...]
    segs: Mapping[int, Segment]
    requests: tuple[wire.Request, ...]
    req_msg: tuple[int, ...]
    answers: Mapping[int, tuple[str, bytes | None, list | None, bytes | None]]
    replace: Mapping[int, str]
    values: tuple[bytes, ...] | None = None
    failed: frozenset[int] = frozenset()


class Intake:
    """The first step: a poll's messages in (Kafka loop), their unit out to `next`."""

    def __init__(self, next: Step, *, topic: str, output_topic: str, dlq_topic: str, max_bytes: int,
                 max_chars: int, dead_letter_window: int, max_dead_letter_ratio: float,
                 error_value: Callable[[wire.Invalid], bytes], tracker: OffsetTracker,
                 stats: Stats, replacements: Replacements):
        self.topic, self.output_topic, self.dlq_topic = topic, output_topic, dlq_topic
        self.max_bytes, self.max_chars = max_bytes, max_chars
        self.error_value = error_value
        self.tracker, self.stats = tracker, stats
        self._window = dead_letter_window
        self._max_dead = max_dead_letter_ratio * dead_letter_window
        self._ring = bytearray(dead_letter_window)
        self._pos = self._seen = self._dead = 0
        # Why an input's answer must be replaced: remembered by exactly-once after an answer
        # could not be written, taken here when the rewound input comes round again.
        self.replacements = replacements
        self.next = next

    def submit(self, msgs: list) -> None:
        """Hand the unit of a poll's messages (errors already filtered out) to the next step;
        nothing when none of them is ours."""
        unit = self.take(msgs)
        if unit is not None:
            self.next.submit(unit)

    def poll(self) -> None:
        """(Intake works on the Kafka loop's thread, within `submit`.)"""

    def close(self) -> None:
        """(Nothing kept between polls.)"""

    def join(self, timeout: float) -> bool:
        return True

    def take(self, msgs: list) -> Unit | None:
        """The unit of a poll's messages (errors already filtered out), or None when none of
        them is ours."""
        kept: list = []
        requests: list[wire.Request] = []
        req_msg: list[int] = []
        answers: dict = {}
        spans: dict[int, list[int]] = {}  # partition -> [first offset, last offset, count]
        owned: dict[int, bool] = {}
        topic, decode, error_value = self.topic, wire.decode_request, self.error_value
        for m in msgs:
            p = m.partition()
            ours = owned.get(p)
            if ours is None:
                ours = owned[p] = self.tracker.owns((topic, p))
            if not ours:
                self.stats.dropped += 1
                continue
            offset = m.offset()
            span = spans.get(p)
            if span is None:
                spans[p] = [offset, offset, 1]
            else:
                span[1] = offset
                span[2] += 1
            i = len(kept)
            kept.append(m)
            value = m.value()
            dec = decode(value, max_bytes=self.max_bytes, max_chars=self.max_chars)
            if type(dec) is wire.Request:
                requests.append(dec)
                req_msg.append(i)
                self._judge(0)
                continue
            if type(dec) is wire.Invalid:
                key = m.key()  # an error result is keyed by its id, as a result is
                answers[i] = (self.output_topic, error_value(dec), None,
                              key if key is not None else dec.id.encode())
                self._judge(0)
            else:
                answers[i] = (self.dlq_topic, value, wire.dlq_headers(
                    dec.reason, dec.detail, topic, p, offset, m.headers()), m.key())
                self._judge(1)
        self.stats.consumed += len(msgs)
        if not kept:
            return None
        segs = {}
        for p, (first, last, count) in spans.items():
            # Ownership was read above on this same thread, and rebalances run only inside
            # its polls: the partition is still ours.
            seg = self.tracker.add((topic, p), first, last + 1, count)
            assert seg is not None, f"partition {p} was given up during intake"
            segs[p] = seg
        replace = _NOTHING
        if self.replacements:
            found = {i: reason for i, m in enumerate(kept)
                     if (reason := self.replacements.take(m.partition(), m.offset()))}
            replace = MappingProxyType(found) if found else _NOTHING
        return Unit(tuple(kept), MappingProxyType(segs), tuple(requests), tuple(req_msg),
                    MappingProxyType(answers), replace)

    def _judge(self, dead: int) -> None:
        """Keep the share of dead letters among the last `window` messages."""
        ring, pos = self._ring, self._pos
        self._dead += dead - ring[pos]
        ring[pos] = dead
        self._pos = (pos + 1) % self._window
        if self._seen < self._window:
            self._seen += 1
        if self._seen == self._window and self._dead > self._max_dead:
            raise FatalStop(
                f"{self._dead} of the last {self._window} messages had no usable id; is "
                f"--input-topic ({self.topic}) the right topic? Raise --max-dead-letter-ratio "
                "to let the worker dead-letter them")
