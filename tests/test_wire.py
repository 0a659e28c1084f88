"""The wire format: every input gets classified, never an exception."""

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from mgeo import wire


def test_round_trip_request():
    raw = wire.encode_request("a1", "北京市朝阳区建国路88号", "朝阳区建国路88号", {"src": "etl"})
    dec = wire.decode_request(raw)
    assert dec == wire.Request("a1", "北京市朝阳区建国路88号", "朝阳区建国路88号",
                               {"src": "etl"}, True)


def test_integer_id_is_carried_as_string():
    dec = wire.decode_request(b'{"id": 42, "addr1": "a", "addr2": "b"}')
    assert isinstance(dec, wire.Request) and dec.id == "42" and not dec.has_meta


@pytest.mark.parametrize("value,reason", [
    (b"\xff\xfe not json", wire.NOT_JSON),
    (b"[1, 2]", wire.NOT_OBJECT),
    (b'"just a string"', wire.NOT_OBJECT),
    (b'{"addr1": "a", "addr2": "b"}', wire.MISSING_ID),
    (b'{"id": "", "addr1": "a", "addr2": "b"}', wire.INVALID_ID),
    (b'{"id": true, "addr1": "a", "addr2": "b"}', wire.INVALID_ID),
    (b'{"id": {"x": 1}, "addr1": "a", "addr2": "b"}', wire.INVALID_ID),
    (b"", wire.EMPTY_VALUE),
    (None, wire.EMPTY_VALUE),
])
def test_dead_letters(value, reason):
    dec = wire.decode_request(value)
    assert isinstance(dec, wire.DeadLetter) and dec.reason == reason and dec.detail


@pytest.mark.parametrize("obj,code", [
    ({"id": "x", "addr1": "", "addr2": "b"}, wire.EMPTY_ADDRESS),
    ({"id": "x", "addr1": "   ", "addr2": "b"}, wire.EMPTY_ADDRESS),
    ({"id": "x", "addr2": "b"}, wire.EMPTY_ADDRESS),
    ({"id": "x", "addr1": "a", "addr2": 7}, wire.INVALID_TYPE),
    ({"id": "x", "addr1": ["a"], "addr2": "b"}, wire.INVALID_TYPE),
    ({"id": "x", "addr1": "路" * 1001, "addr2": "b"}, wire.ADDRESS_TOO_LONG),
])
def test_error_results(obj, code):
    dec = wire.decode_request(orjson.dumps(obj), max_chars=1000)
    assert isinstance(dec, wire.Invalid) and dec.id == "x" and dec.code == code


def test_oversized_message_gets_error_without_meta():
    raw = orjson.dumps({"id": "big", "addr1": "a", "addr2": "b", "meta": "m" * 5000})
    dec = wire.decode_request(raw, max_bytes=1000)
    assert isinstance(dec, wire.Invalid) and dec.code == wire.MESSAGE_TOO_LARGE
    res = orjson.loads(wire.encode_error(dec.id, dec.code, dec.message, "m", dec.meta,
                                         dec.has_meta))
    assert res["id"] == "big" and "meta" not in res and res["error"]["code"] == "message_too_large"


def test_result_score_label_and_meta():
    probs = {"not_match": 0.1, "partial_match": 0.2, "exact_match": 0.7}
    res = orjson.loads(wire.encode_result("i", probs, ["exact_match"], "m", False,
                                          {"k": 1}, True))
    assert res["score"] == pytest.approx(0.7) and res["label"] == "exact_match"
    assert res["probs"] == probs and res["meta"] == {"k": 1} and res["truncated"] is False
    res2 = orjson.loads(wire.encode_result("i", probs, ["exact_match", "partial_match"], "m",
                                           True))
    assert res2["score"] == pytest.approx(0.9) and "meta" not in res2


def test_meta_null_is_passed_through_when_sent():
    dec = wire.decode_request(b'{"id": "x", "addr1": "a", "addr2": "b", "meta": null}')
    res = orjson.loads(wire.encode_result(dec.id, {"a": 1.0}, ["a"], "m", False, dec.meta,
                                          dec.has_meta))
    assert "meta" in res and res["meta"] is None


def test_dlq_headers_keep_originals_and_name_the_source():
    hdrs = wire.dlq_headers(wire.NOT_JSON, "bad", "t", 3, 99, [("trace", b"abc")])
    d = dict(hdrs)
    assert d["trace"] == b"abc" and d[wire.DLQ_REASON] == b"not_json"
    assert d[wire.DLQ_TOPIC] == b"t" and d[wire.DLQ_PARTITION] == b"3"
    assert d[wire.DLQ_OFFSET] == b"99"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_classified(value):
    dec = wire.decode_request(value)
    assert isinstance(dec, (wire.Request, wire.Invalid, wire.DeadLetter))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1)
                    | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c,
                                                                         max_size=3)))
@pytest.mark.slow
def test_any_json_is_classified(obj):
    value = orjson.dumps({"id": obj, "addr1": obj, "addr2": "x"})
    dec = wire.decode_request(value)
    assert isinstance(dec, (wire.Request, wire.Invalid, wire.DeadLetter))


def test_typed_result_round_trip_and_rejects():
    probs = {"not_match": 0.1, "partial_match": 0.2, "exact_match": 0.7}
    value = wire.encode_result("i", probs, ["exact_match"], "m", True, {"k": 1}, True)
    res = wire.parse_result(value)
    assert res.ok and res.score == pytest.approx(0.7) and res.label == "exact_match"
    assert res.truncated and res.meta == {"k": 1} and orjson.dumps(res.to_dict()) == value
    err = wire.parse_result(wire.encode_error("j", wire.SCORING_FAILED, "boom", "m"))
    assert not err.ok and err.error_code == "scoring_failed" and not err.has_meta
    for bad in (b"nope", b"[1]", b'{"score": 1}', b'{"id": "x"}', b'{"id": "x", "error": 3}',
                b'{"id": "x", "score": true, "probs": {}}'):
        with pytest.raises(ValueError):
            wire.parse_result(bad)
