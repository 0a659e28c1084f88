"""The wire format: what requests, results and dead letters look like on Kafka.

Both sides import this module; it imports no torch.

Request value (JSON object)::

    {"id": str, "addr1": str, "addr2": str, "meta": <any JSON, optional>}

The message key defaults to the id. An integer id is accepted and carried as its decimal string.

Result value, when the pair was scored::

    {"id", "score": float in [0, 1], "label": str, "probs": {label: float}, "model": str,
     "truncated": bool, "meta": <as sent, only when sent>}

and when a request has a usable id but cannot be scored::

    {"id", "error": {"code": str, "message": str}, "model": str, "meta": <as sent>}

A message without a usable id goes to the dead-letter topic with its value unchanged and
headers (`mgeo.dlq.*`, `mgeo.source.*`) naming the reason and where it came from.

Result files (`mgeo score`, `mgeo collect`, `mgeo demo`; written by `mgeo.writers`) hold the
same results, so identical results give identical files:

- JSONL: one result value a line, exactly as the worker publishes it.
- CSV and TSV: the columns `RESULT_COLUMNS_HEAD`, one `prob_<label>` per label of the model (in
  the model's label order), then `RESULT_COLUMNS_TAIL`:

  ``id, label, score, prob_<label>..., truncated, error_code, error_message, model, meta``

  Numbers are written as JSON writes them (shortest text that reads back the same float),
  `truncated` as `true`/`false`; the columns a row does not have are empty (an error row has
  no label, score, probabilities or truncated; a scored row no error). `meta` holds the
  request's metadata as one JSON value (empty when the request sent none), so no metadata
  key, an input column named `label` say, can ever clash with a result column.
- Excel .xlsx: the CSV's columns, with scores and probabilities as numbers and `truncated` as
  a boolean, so a spreadsheet sorts and filters them.
"""

from __future__ import annotations

from dataclasses import dataclass, field as _field
from typing import Any, Iterable, Mapping

import orjson

# Error codes of error results (the request had an id).
EMPTY_ADDRESS = "empty_address"
INVALID_TYPE = "invalid_type"
ADDRESS_TOO_LONG = "address_too_long"
MESSAGE_TOO_LARGE = "message_too_large"
SCORING_FAILED = "scoring_failed"

# Reasons for dead letters (no usable id).
NOT_JSON = "not_json"
NOT_OBJECT = "not_object"
MISSING_ID = "missing_id"
INVALID_ID = "invalid_id"
EMPTY_VALUE = "empty_value"

DLQ_REASON = "mgeo.dlq.reason"
DLQ_DETAIL = "mgeo.dlq.detail"
DLQ_TOPIC = "mgeo.source.topic"
DLQ_PARTITION = "mgeo.source.partition"
DLQ_OFFSET = "mgeo.source.offset"

# MGeo's labels in the id order of its fine-tuning recipe: what fresh models, converted
# checkpoints without names and the synthetic data use. A checkpoint's own config.json
# `id2label` always wins over this order.
MGEO_LABELS = ("not_match", "partial_match", "exact_match")

_MAX_ID_CHARS = 512


@dataclass(slots=True)
class Request:
    """A pair that can be scored."""

    id: str
    addr1: str
    addr2: str
    meta: Any = None
    has_meta: bool = False


@dataclass(slots=True)
class Invalid:
    """A request with a usable id that cannot be scored: it gets an error result."""

    id: str
    code: str
    message: str
    meta: Any = None
    has_meta: bool = False


@dataclass(slots=True)
class DeadLetter:
    """A message without a usable id: it goes to the dead-letter topic unchanged."""

    reason: str
    detail: str


Decoded = Request | Invalid | DeadLetter


def encode_request(id: str, addr1: str, addr2: str, meta: Any = None) -> bytes:
    obj: dict[str, Any] = {"id": id, "addr1": addr1, "addr2": addr2}
    if meta is not None:
        obj["meta"] = meta
    return orjson.dumps(obj)


def _usable_id(raw: Any) -> str | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    if isinstance(raw, str) and raw.strip() and len(raw) <= _MAX_ID_CHARS:
        return raw
    return None


def decode_request(value: bytes | None, *, max_bytes: int = 65_536,
                   max_chars: int = 1000) -> Decoded:
    """Classify one message value. Never raises on any input."""
    if not value:
        return DeadLetter(EMPTY_VALUE, "the message has no value")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return DeadLetter(NOT_JSON, f"value is not UTF-8 JSON: {exc}"[:300])
    if not isinstance(obj, dict):
        return DeadLetter(NOT_OBJECT, f"value is a JSON {type(obj).__name__}, not an object")
    if "id" not in obj:
        return DeadLetter(MISSING_ID, "the object has no 'id' field")
    rid = _usable_id(obj["id"])
    if rid is None:
        return DeadLetter(INVALID_ID, "'id' must be a non-empty string (or an integer) of at "
                                      f"most {_MAX_ID_CHARS} characters")
    has_meta = "meta" in obj
    meta = obj.get("meta")
    if len(value) > max_bytes:
        # Too big to answer with its meta echoed: the error result carries the id alone.
        return Invalid(rid, MESSAGE_TOO_LARGE,
                       f"request is {len(value)} bytes; the limit is {max_bytes}")
    for field in ("addr1", "addr2"):
        addr = obj.get(field)
        if addr is None or isinstance(addr, str) and not addr.strip():
            return Invalid(rid, EMPTY_ADDRESS, f"'{field}' is missing or empty", meta, has_meta)
        if not isinstance(addr, str):
            return Invalid(rid, INVALID_TYPE,
                           f"'{field}' must be a string, got {type(addr).__name__}",
                           meta, has_meta)
        if len(addr) > max_chars:
            return Invalid(rid, ADDRESS_TOO_LONG,
                           f"'{field}' has {len(addr)} characters; the limit is {max_chars}",
                           meta, has_meta)
    return Request(rid, obj["addr1"].strip(), obj["addr2"].strip(), meta, has_meta)


class ResultEncoder:
    """Scored results of one model, encoded many at a time: `score` is the summed probability
    of the positive labels (clamped to [0, 1]), `label` the most probable label (the first in
    the model's label order on a tie), `probs` every label in that order."""

    def __init__(self, labels: Iterable[str], positive: Iterable[str], model: str):
        self.labels = list(labels)
        self.positive = [self.labels.index(p) for p in positive]
        self.model = model

    def encode(self, id: str, row: list[float], truncated: bool, meta: Any = None,
               has_meta: bool = False) -> bytes:
        """One result from `row`, the probabilities in label order."""
        pos = self.positive
        score = row[pos[0]] if len(pos) == 1 else sum(row[i] for i in pos)
        score = 1.0 if score > 1.0 else 0.0 if score < 0.0 else score
        obj: dict[str, Any] = {"id": id, "score": score,
                               "label": self.labels[row.index(max(row))],
                               "probs": dict(zip(self.labels, row)), "model": self.model,
                               "truncated": truncated}
        if has_meta:
            obj["meta"] = meta
        return orjson.dumps(obj)


def encode_result(id: str, probs: Mapping[str, float], positive: Iterable[str], model: str,
                  truncated: bool, meta: Any = None, has_meta: bool = False) -> bytes:
    """One scored result from a label -> probability mapping (see `ResultEncoder`)."""
    return ResultEncoder(probs, positive, model).encode(id, list(probs.values()), truncated,
                                                        meta, has_meta)


def encode_error(id: str, code: str, message: str, model: str, meta: Any = None,
                 has_meta: bool = False) -> bytes:
    obj: dict[str, Any] = {"id": id, "error": {"code": code, "message": message},
                           "model": model}
    if has_meta:
        obj["meta"] = meta
    return orjson.dumps(obj)


def decode_result(value: bytes) -> dict[str, Any]:
    """A result value as the plain dict the worker encoded (see `parse_result` for a typed
    one)."""
    return orjson.loads(value)


@dataclass(frozen=True, slots=True)
class Result:
    """One answer as a downstream reader sees it: a score, or an error (`ok` is False).

    `to_dict()` gives back the wire object, key for key, in the worker's order.
    """

    id: str
    model: str | None = None
    score: float | None = None
    label: str | None = None
    probs: dict[str, float] = _field(default_factory=dict)
    truncated: bool = False
    error_code: str | None = None
    error_message: str | None = None
    meta: Any = None
    has_meta: bool = False

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def to_dict(self) -> dict[str, Any]:
        if self.ok:
            obj: dict[str, Any] = {"id": self.id, "score": self.score, "label": self.label,
                                   "probs": dict(self.probs), "model": self.model,
                                   "truncated": self.truncated}
        else:
            obj = {"id": self.id, "error": {"code": self.error_code,
                                            "message": self.error_message or ""},
                   "model": self.model}
        if self.has_meta:
            obj["meta"] = self.meta
        return obj


def parse_result(value: bytes | str | Mapping[str, Any]) -> Result:
    """A typed `Result` from a result value (or its decoded dict); `ValueError` saying why
    when it is not one."""
    if isinstance(value, Mapping):
        obj = value
    else:
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(obj, Mapping):
        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
    rid = obj.get("id")
    if not isinstance(rid, str) or not rid:
        raise ValueError("no string 'id'")
    model = obj.get("model")
    common = {"id": rid, "model": model if isinstance(model, str) else None,
              "meta": obj.get("meta"), "has_meta": "meta" in obj}
    err = obj.get("error")
    if err is not None:
        if not isinstance(err, Mapping) or not isinstance(err.get("code"), str):
            raise ValueError("'error' is not an object with a string 'code'")
        return Result(**common, error_code=err["code"], error_message=str(err.get("message", "")))
    score, probs = obj.get("score"), obj.get("probs")
    if not isinstance(score, (int, float)) or isinstance(score, bool) \
            or not isinstance(probs, Mapping):
        raise ValueError("neither a score with probs nor an error")
    return Result(**common, score=float(score), label=obj.get("label"),
                  probs={str(k): float(v) for k, v in probs.items()},
                  truncated=bool(obj.get("truncated", False)))


RESULT_COLUMNS_HEAD = ("id", "label", "score")
RESULT_COLUMNS_TAIL = ("truncated", "error_code", "error_message", "model", "meta")


def result_columns(labels: Iterable[str]) -> list[str]:
    """The header of a result table for a model with `labels` (in its id order)."""
    return [*RESULT_COLUMNS_HEAD, *(f"prob_{lab}" for lab in labels), *RESULT_COLUMNS_TAIL]


def result_row(res: Mapping[str, Any]) -> dict[str, str]:
    """A result object as a table row: every value a string, absent ones empty."""
    row = dict.fromkeys((*RESULT_COLUMNS_HEAD, *RESULT_COLUMNS_TAIL), "")
    row["id"] = _text(res.get("id"))
    row["model"] = _text(res.get("model"))
    err = res.get("error")
    if isinstance(err, dict):
        row["error_code"] = _text(err.get("code"))
        row["error_message"] = _text(err.get("message"))
    else:
        row["label"] = _text(res.get("label"))
        row["score"] = _number(res.get("score"))
        if "truncated" in res:
            row["truncated"] = "true" if res["truncated"] else "false"
        for lab, p in (res.get("probs") or {}).items():
            row[f"prob_{lab}"] = _number(p)
    if "meta" in res:
        row["meta"] = orjson.dumps(res["meta"]).decode()
    return row


def result_line(res: dict[str, Any] | bytes) -> str:
    """A result as a JSONL line (no newline): the wire value itself when given bytes."""
    return (res if isinstance(res, bytes) else orjson.dumps(res)).decode()


def _text(x: Any) -> str:
    return "" if x is None else str(x)


def _number(x: Any) -> str:
    if x is None or isinstance(x, bool):
        return ""
    return orjson.dumps(x).decode() if isinstance(x, (int, float)) else str(x)


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int,
                original: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """The original headers followed by ours, naming why and where the message came from."""
    ours = [(DLQ_REASON, reason.encode()), (DLQ_DETAIL, detail.encode("utf-8", "replace")),
            (DLQ_TOPIC, topic.encode()), (DLQ_PARTITION, str(partition).encode()),
            (DLQ_OFFSET, str(offset).encode())]
    return list(original or []) + ours
