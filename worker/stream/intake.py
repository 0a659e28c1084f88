"""From the messages of one poll to a `Unit`: requests to score and answers known at once.

Every message of a partition we own gets exactly one answer: a result (scored later), an error
result (a request with a usable id that cannot be scored) or a dead letter (no usable id).
Messages of partitions that are not (or no longer) ours are dropped: their owner answers them.
A topic that is mostly dead letters stops the worker instead of being drained (`FatalStop`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from mgeo import wire
from mgeo.logs import RateLimitedLog
from mgeo.worker.stream.events import Stats
from mgeo.worker.stream.offsets import OffsetTracker, Segment

log = logging.getLogger("mgeo.worker")


class FatalStop(RuntimeError):
    """A condition under which the worker must stop rather than go on answering."""


class Unit:
    """The messages of one poll (of the partitions we own), on their way to being answered.

    `answers` maps a message's index to (topic, value, headers, key) for the answers known at
    intake; `values` is filled with one result value per request once scored (`failed`: those
    that are error results because the model failed on the pair); `replace` maps a message's
    index to why its answer could not be written before (exactly-once rewinds after such a
    failure): that answer is sent as its bounded substitute instead.
    """

    __slots__ = ("msgs", "segs", "requests", "req_msg", "answers", "values", "failed",
                 "replace")

    def __init__(self) -> None:
        self.msgs: list[Any] = []
        self.segs: dict[int, Segment] = {}
        self.requests: list[wire.Request] = []
        self.req_msg: list[int] = []
        self.answers: dict[int, tuple[str, bytes | None, list | None, bytes | None]] = {}
        self.values: list[bytes] | None = None
        self.failed: set[int] = set()  # requests whose value is an error result
        self.replace: dict[int, str] = {}


class Intake:
    def __init__(self, *, topic: str, output_topic: str, dlq_topic: str, max_bytes: int,
                 max_chars: int, dead_letter_window: int, max_dead_letter_ratio: float,
                 error_value: Callable[[wire.Invalid], bytes], tracker: OffsetTracker,
                 stats: Stats, ratelog: RateLimitedLog):
        self.topic, self.output_topic, self.dlq_topic = topic, output_topic, dlq_topic
        self.max_bytes, self.max_chars = max_bytes, max_chars
        self.error_value = error_value
        self.tracker, self.stats, self.ratelog = tracker, stats, ratelog
        self._window = dead_letter_window
        self._max_dead = max_dead_letter_ratio * dead_letter_window
        self._ring = bytearray(dead_letter_window)
        self._pos = self._seen = self._dead = 0
        # (partition, offset) -> why its answer must be replaced: set by exactly-once after
        # an answer could not be written, read when the rewound input comes round again.
        self.replace: dict[tuple[int, int], str] = {}

    def take(self, msgs: list) -> Unit | None:
        """The unit of a poll's messages (errors already filtered out), or None when none of
        them is ours."""
        unit = Unit()
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
            i = len(unit.msgs)
            unit.msgs.append(m)
            value = m.value()
            dec = decode(value, max_bytes=self.max_bytes, max_chars=self.max_chars)
            if type(dec) is wire.Request:
                unit.requests.append(dec)
                unit.req_msg.append(i)
                self._judge(0)
                continue
            if type(dec) is wire.Invalid:
                key = m.key()  # an error result is keyed by its id, as a result is
                unit.answers[i] = (self.output_topic, error_value(dec), None,
                                   key if key is not None else dec.id.encode())
                self._judge(0)
            else:
                unit.answers[i] = (self.dlq_topic, value, wire.dlq_headers(
                    dec.reason, dec.detail, topic, p, offset, m.headers()), m.key())
                self._judge(1)
        self.stats.consumed += len(msgs)
        if not unit.msgs:
            return None
        for p, (first, last, count) in spans.items():
            # Ownership was read above on this same thread, and rebalances run only inside
            # its polls: the partition is still ours.
            seg = self.tracker.add((topic, p), first, last + 1, count, unit)
            assert seg is not None, f"partition {p} was given up during intake"
            unit.segs[p] = seg
        if self.replace:
            for i, m in enumerate(unit.msgs):
                reason = self.replace.pop((m.partition(), m.offset()), None)
                if reason is not None:
                    unit.replace[i] = reason
        return unit

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
