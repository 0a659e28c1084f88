"""One result schema for every writer: `mgeo score`, `mgeo collect` and the demo write the same
file for the same results, and request metadata never clashes with a result column."""

from __future__ import annotations

import csv
import json

import orjson
import pytest

from mgeo import wire
from mgeo.readers import count_rows, read_rows
from mgeo.wire import result_columns, result_row
from mgeo.writers import ResultWriter, write_results
from mgeo.tools.cli import main
from mgeo.tools.demo import sample_path

LABELS = ["not_match", "partial_match", "exact_match"]
PROBS = {"not_match": 0.1, "partial_match": 0.2, "exact_match": 0.7}


def _values() -> list[bytes]:
    """Result values exactly as the worker publishes them."""
    return [
        wire.encode_result("a", PROBS, ["exact_match"], "m", False,
                           {"label": "not_match", "id": "x", "score": 1, "meta": "y"}, True),
        wire.encode_result("b", PROBS, ["exact_match"], "m", True),
        wire.encode_result("c", PROBS, ["exact_match"], "m", False, None, True),
        wire.encode_error("d", wire.EMPTY_ADDRESS, "'addr1' is missing or empty", "m",
                          {"city": "南京"}, True),
        wire.encode_error("e", wire.MESSAGE_TOO_LARGE, "too big", "m"),
    ]


def test_csv_columns_and_values():
    assert result_columns(LABELS) == ["id", "label", "score", "prob_not_match",
                                      "prob_partial_match", "prob_exact_match", "truncated",
                                      "error_code", "error_message", "model", "meta"]
    rows = [result_row(orjson.loads(v)) for v in _values()]
    a, b, c, d, e = rows
    assert a["label"] == "exact_match" and float(a["score"]) == 0.7
    assert a["truncated"] == "false" and b["truncated"] == "true"  # JSON's spelling, always
    assert a["prob_partial_match"] == "0.2" and a["error_code"] == a["error_message"] == ""
    # Metadata is one JSON value: its keys never become, or overwrite, result columns.
    assert json.loads(a["meta"]) == {"label": "not_match", "id": "x", "score": 1, "meta": "y"}
    assert b["meta"] == "" and c["meta"] == "null"  # not sent vs sent as null
    assert d["error_code"] == "empty_address" and d["label"] == d["score"] == d["truncated"] == ""
    assert json.loads(d["meta"]) == {"city": "南京"} and e["meta"] == "" and e["model"] == "m"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_dicts_bytes_and_streaming_writer_give_identical_files(tmp_path, suffix):
    values = _values()
    from_dicts = tmp_path / f"dicts{suffix}"
    from_bytes = tmp_path / f"bytes{suffix}"
    streamed = tmp_path / f"stream{suffix}"
    assert write_results(from_dicts, [orjson.loads(v) for v in values], LABELS) == len(values)
    write_results(from_bytes, values, LABELS)
    with ResultWriter(streamed, LABELS) as out:
        for v in values:
            out.write(v)
    assert from_dicts.read_bytes() == from_bytes.read_bytes() == streamed.read_bytes()
    if suffix == ".jsonl":  # the worker's values, byte for byte
        assert from_dicts.read_bytes() == b"".join(v + b"\n" for v in values)
    else:
        header = from_dicts.read_text(encoding="utf-8").splitlines()[0].split(",")
        assert len(header) == len(set(header))


def test_typed_results_give_back_the_wire_object():
    for value in _values():
        res = wire.parse_result(value)
        assert orjson.dumps(res.to_dict()) == value


def test_a_failed_writer_leaves_no_file(tmp_path):
    out = tmp_path / "r.csv"
    with pytest.raises(RuntimeError):
        with ResultWriter(out, LABELS) as w:
            w.write(_values()[0])
            raise RuntimeError("boom")
    assert not out.exists() and not list(tmp_path.iterdir())


def test_count_rows(tmp_path):
    assert count_rows(sample_path()) == len(list(read_rows(sample_path()))) == 300
    j = tmp_path / "p.jsonl"
    j.write_text('{"id": 1}\n\nnot json\n{"id": 2}\n', encoding="utf-8")
    assert count_rows(j) == len(list(read_rows(j))) == 3
    assert count_rows("-") is None


def test_score_writes_the_models_label_not_the_inputs(tmp_path, capsys):
    """Finding 1: the sample's own `label` column used to come out as a second `label` column,
    the one csv.DictReader keeps, hiding the model's label on the rows where they differ."""
    out_csv, out_jsonl = tmp_path / "out.csv", tmp_path / "out.jsonl"
    for out in (out_csv, out_jsonl):
        assert main(["score", "--in", str(sample_path()), "--out", str(out), "--device", "cpu",
                     "--no-progress"]) == 0
    header = out_csv.read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header.count("label") == 1 and header == result_columns(LABELS)
    rows = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    answers = [json.loads(x) for x in out_jsonl.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [a["id"] for a in answers] == [
        r.obj["id"] for r in read_rows(sample_path())]
    assert [r["label"] for r in rows] == [a["label"] for a in answers]  # the model's
    inputs = [json.loads(r["meta"])["label"] for r in rows]              # the sample's
    assert inputs == [r.obj["meta"]["label"] for r in read_rows(sample_path())]
    assert any(r["label"] != given for r, given in zip(rows, inputs))
    # The CSV is the JSONL, flattened: the same results, the same schema.
    assert rows == [result_row(a) for a in answers]


def test_atomic_directory_replaces_whole_or_not_at_all(tmp_path):
    from mgeo.writers import atomic_directory

    dst = tmp_path / "model"
    with atomic_directory(dst) as tmp:
        (tmp / "weights").write_text("v1")
    assert (dst / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_directory(dst) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("interrupted")
    assert (dst / "weights").read_text() == "v1"  # a failed build leaves the old one
    with atomic_directory(dst) as tmp:
        (tmp / "weights").write_text("v2")
    assert (dst / "weights").read_text() == "v2"
    with atomic_directory(dst, replace=False) as tmp:  # someone else's copy stays
        (tmp / "weights").write_text("v3")
    assert (dst / "weights").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporaries left
