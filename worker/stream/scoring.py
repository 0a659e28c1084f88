"""The scoring step: requests in, one result value each out. No torch, no Kafka.

It drives an engine in two halves (`prepare` on the CPU, `run` on the device, so the next batch
can be prepared while this one runs) and turns probabilities into the wire format's results.

A batch the engine cannot score is split until the pairs it fails on are isolated; each of those
gets a `scoring_failed` error result. When nothing of a batch could be scored, a pair known to
score is tried: if the engine fails on it too, the engine is broken (`EngineFailure`: the worker
stops and commits none of it); if it scores, the batch's pairs really are unscorable, and each is
tried once more alone before it is answered as failed. The verdict is the same for a batch of one
and a batch of thousands.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from mgeo import wire
from mgeo.logs import RateLimitedLog

log = logging.getLogger("mgeo.worker")

# MGeo's published reference pair: every working model scores it.
KNOWN_GOOD = ("紫萱路363号人力社保局", "紫萱路363号市人社局")


class RowsLike(Protocol):
    probs: list[list[float]]    # per pair, in the engine's label order
    truncated: list[bool]


class EngineLike(Protocol):
    labels: list[str]
    positive: list[str]
    model_name: str
    device: str  # "cpu" or an accelerator's name
    lanes: int   # batches `forward` may run at once, each called from its own thread

    def prepare(self, pairs: Sequence[tuple[str, str]]) -> Any: ...
    def forward(self, prepared: Any) -> RowsLike: ...
    def score_rows(self, pairs: Sequence[tuple[str, str]]) -> RowsLike: ...


class EngineFailure(RuntimeError):
    """The engine fails on every input, a known good pair included: stop, do not answer."""


@dataclass(slots=True)
class Job:
    requests: list[wire.Request]
    prepared: Any = None          # the engine's prepared batch, or the exception preparing it
    probs: list = field(default_factory=list)
    truncated: list = field(default_factory=list)
    failed: dict[int, Exception] = field(default_factory=dict)


class Scorer:
    def __init__(self, engine: EngineLike):
        self.engine = engine
        self.model_name = engine.model_name
        self.lanes = engine.lanes
        # With an accelerator, one batch more is prepared while the device runs one.
        self.prefetch = engine.device != "cpu"
        self.labels = list(engine.labels)
        self._results = wire.ResultEncoder(self.labels, engine.positive, self.model_name)
        self.failed_pairs = 0
        self._ratelog = RateLimitedLog(log)

    def error(self, inv: wire.Invalid) -> bytes:
        """The error result of a request that cannot be scored."""
        return wire.encode_error(inv.id, inv.code, inv.message, self.model_name, inv.meta,
                                 inv.has_meta)

    # -- the two halves ----------------------------------------------------------------------

    def prepare(self, requests: list[wire.Request]) -> Job:
        job = Job(requests)
        try:
            job.prepared = self.engine.prepare([(r.addr1, r.addr2) for r in requests])
        except Exception as exc:  # noqa: BLE001 - isolated in run()
            job.prepared = exc
        return job

    def run(self, job: Job) -> Job:
        """Score `job`; failures are isolated to the pairs that cause them."""
        if not job.requests:
            return job
        if not isinstance(job.prepared, Exception):
            try:
                rows = self.engine.forward(job.prepared)
                job.probs, job.truncated = rows.probs, rows.truncated
                return job
            except Exception as exc:  # noqa: BLE001 - isolated below
                self._ratelog("batch", logging.WARNING, "a batch of %d failed in the engine "
                              "(%r); isolating the pairs it fails on", len(job.requests), exc)
        pairs = [(r.addr1, r.addr2) for r in job.requests]
        n = len(pairs)
        job.probs, job.truncated, job.failed = [None] * n, [False] * n, {}
        self._isolate(pairs, list(range(n)), job)
        if len(job.failed) == n:
            self._judge_engine(job)
            for i in list(job.failed):  # the engine works: give each pair one more chance
                self._isolate(pairs, [i], job, again=True)
        self.failed_pairs += len(job.failed)
        for i, exc in job.failed.items():
            self._ratelog("pair", logging.WARNING, "a pair failed in the engine and is answered "
                          "with scoring_failed (id %s): %r", job.requests[i].id, exc)
        return job

    def _isolate(self, pairs, idx: list[int], job: Job, again: bool = False) -> None:
        try:
            rows = self.engine.score_rows([pairs[i] for i in idx])
        except Exception as exc:  # noqa: BLE001 - split until isolated
            if len(idx) == 1:
                job.failed[idx[0]] = exc
                return
            mid = len(idx) // 2
            self._isolate(pairs, idx[:mid], job)
            self._isolate(pairs, idx[mid:], job)
            return
        for k, i in enumerate(idx):
            job.probs[i], job.truncated[i] = rows.probs[k], rows.truncated[k]
            if again:
                job.failed.pop(i, None)

    def _judge_engine(self, job: Job) -> None:
        try:
            self.engine.score_rows([KNOWN_GOOD])
        except Exception as exc:  # noqa: BLE001 - the verdict
            raise EngineFailure(f"the engine failed on each of {len(job.requests)} pairs and "
                                f"on a known good pair: {exc!r}") from None

    # -- results -----------------------------------------------------------------------------

    def encode(self, job: Job, start: int = 0, stop: int | None = None) -> list[bytes]:
        """The result values of requests `start:stop` of `job`, in order."""
        end = len(job.requests) if stop is None else stop
        requests, probs, truncated = job.requests, job.probs, job.truncated
        result = self._results.encode
        if not job.failed:
            return [result(r.id, p, t, r.meta, r.has_meta) for r, p, t in
                    zip(requests[start:end], probs[start:end], truncated[start:end])]
        out = []
        for k in range(start, end):
            req = requests[k]
            if k in job.failed:
                out.append(wire.encode_error(
                    req.id, wire.SCORING_FAILED,
                    f"the model failed on this pair: {job.failed[k]}"[:500], self.model_name,
                    req.meta, req.has_meta))
            else:
                out.append(result(req.id, probs[k], truncated[k], req.meta, req.has_meta))
        return out
