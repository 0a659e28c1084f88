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

A message without a usable id goes to the dead-letter topic with its value unchanged and the
headers in `DLQ_HEADERS` naming the reason and where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
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
DLQ_HEADERS = (DLQ_REASON, DLQ_DETAIL, DLQ_TOPIC, DLQ_PARTITION, DLQ_OFFSET)

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


def encode_result(id: str, probs: Mapping[str, float], positive: Iterable[str], model: str,
                  truncated: bool, meta: Any = None, has_meta: bool = False) -> bytes:
    """A scored result. `score` is the summed probability of the positive labels."""
    score = min(1.0, max(0.0, sum(probs[p] for p in positive)))
    label = max(probs, key=probs.__getitem__)
    obj: dict[str, Any] = {"id": id, "score": score, "label": label, "probs": dict(probs),
                           "model": model, "truncated": truncated}
    if has_meta:
        obj["meta"] = meta
    return orjson.dumps(obj)


def encode_error(id: str, code: str, message: str, model: str, meta: Any = None,
                 has_meta: bool = False) -> bytes:
    obj: dict[str, Any] = {"id": id, "error": {"code": code, "message": message},
                           "model": model}
    if has_meta:
        obj["meta"] = meta
    return orjson.dumps(obj)


def decode_result(value: bytes) -> dict[str, Any]:
    return orjson.loads(value)


def dlq_headers(reason: str, detail: str, topic: str, partition: int, offset: int,
                original: list[tuple[str, bytes]] | None = None) -> list[tuple[str, bytes]]:
    """The original headers followed by ours, naming why and where the message came from."""
    ours = [(DLQ_REASON, reason.encode()), (DLQ_DETAIL, detail.encode("utf-8", "replace")),
            (DLQ_TOPIC, topic.encode()), (DLQ_PARTITION, str(partition).encode()),
            (DLQ_OFFSET, str(offset).encode())]
    return list(original or []) + ours
