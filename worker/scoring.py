"""Turning valid requests into result values, with the engine behind an interface.

This module knows neither torch nor Kafka: it takes any object with the Engine's surface
(`score(pairs)`, `labels`, `positive`, `model_name`) so the Kafka loop can be tested with the real
engine or alone.

If a batch fails inside the engine it is split in halves until the failing pair(s) are found;
those get `scoring_failed` error results and the rest are scored. When every pair of a batch fails
on its own, the fault is not in the input (the model or device broke): `EngineFailure` is raised
so the worker stops without committing, rather than answering a whole topic with errors.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

from mgeo import wire

log = logging.getLogger("mgeo.worker")


class EngineLike(Protocol):
    labels: list[str]
    positive: list[str]
    model_name: str

    def score(self, pairs: Sequence[tuple[str, str]]) -> list: ...


class EngineFailure(RuntimeError):
    """The engine fails on every input: stop, do not answer."""


class Scorer:
    def __init__(self, engine: EngineLike):
        self.engine = engine
        self.failed_pairs = 0

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def error(self, inv: wire.Invalid) -> bytes:
        return wire.encode_error(inv.id, inv.code, inv.message, self.engine.model_name,
                                 inv.meta, inv.has_meta)

    def score(self, requests: Sequence[wire.Request]) -> list[bytes]:
        """One result value per request, in order."""
        if not requests:
            return []
        scored = self._score_isolating([(r.addr1, r.addr2) for r in requests])
        if len(requests) > 1 and all(isinstance(s, Exception) for s in scored):
            raise EngineFailure(f"the engine failed on each of {len(requests)} pairs: "
                                f"{scored[0]!r}")
        name, positive = self.engine.model_name, self.engine.positive
        out = []
        for req, s in zip(requests, scored):
            if isinstance(s, Exception):
                self.failed_pairs += 1
                out.append(wire.encode_error(req.id, wire.SCORING_FAILED,
                                             f"the model failed on this pair: {s}"[:500], name,
                                             req.meta, req.has_meta))
            else:
                out.append(wire.encode_result(req.id, s.probs, positive, name, s.truncated,
                                              req.meta, req.has_meta))
        return out

    def _score_isolating(self, pairs: list[tuple[str, str]]) -> list:
        try:
            return list(self.engine.score(pairs))
        except Exception as exc:  # noqa: BLE001 - any engine error is isolated, then judged
            if len(pairs) == 1:
                log.warning("a pair failed in the engine: %r", exc)
                return [exc]
            mid = len(pairs) // 2
            log.warning("a batch of %d failed in the engine (%r); splitting to isolate it",
                        len(pairs), exc)
            return self._score_isolating(pairs[:mid]) + self._score_isolating(pairs[mid:])
