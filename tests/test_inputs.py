"""Real ETL files in, files others can read out (issue 21): GBK/GB18030 and BOM text, Chinese
and mapped headers, TSV, Excel, stdin; every mistake answered in one line naming the user's
path, before the model loads; results written whole, with the umask's permissions; models
with other labels refused; a pair the model fails on answered, not the whole file failed."""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from conftest import ROOT
from engines import RuleEngine
from pairfiles import PAIRS, rows as _rows, table as _table, workbook as _workbook
from mgeo import wire
from mgeo.readers import HEADER_NAMES, InputError, PairReader, count_rows
from mgeo.tools.cli import main


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def _score(capsys, *args: str) -> tuple[int, str]:
    rc = main(["score", *map(str, args), "--no-progress", "--device", "cpu"])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mgeo score: "), err
    return lines[0]


@pytest.fixture()
def loads(monkeypatch) -> list:
    """Each model load of `mgeo score`, recorded (a mistake must be answered before one)."""
    from mgeo.worker.inference.engine import Engine

    calls: list = []
    real = Engine.from_settings.__func__

    def spy(cls, s):
        calls.append(s.model)
        return real(cls, s)

    monkeypatch.setattr(Engine, "from_settings", classmethod(spy))
    return calls


# ---- encodings ----------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gbk", "gb18030"])
@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_gbk_and_gb18030_tables_with_chinese_headers_are_scored(tmp_path, capsys, tiny_model,
                                                                encoding, suffix):
    extra = "𠮷野家" if encoding == "gb18030" else ""  # not in GBK: four bytes in GB18030
    src = _table(tmp_path / f"导出{suffix}", _rows(4, extra), encoding=encoding,
                 delimiter="\t" if suffix == ".tsv" else ",")
    out = tmp_path / "out.jsonl"
    rc, err = _score(capsys, "--in", src, "--out", out, "--model", tiny_model)
    assert rc == 0, err
    results = _jsonl(out)
    assert [r["id"] for r in results] == ["1", "2", "3", "4"]
    assert all(r["meta"] == {"城市": "南京"} for r in results)
    assert results[0]["id"] == "1" and "GB18030" in err  # GBK is read as its superset


def test_a_bom_file_with_chinese_headers(tmp_path, capsys, tiny_model):
    src = _table(tmp_path / "bom.csv", _rows(3), encoding="utf-8-sig")
    assert src.read_bytes().startswith(b"\xef\xbb\xbf")
    rc, err = _score(capsys, "--in", src, "--out", tmp_path / "o.jsonl", "--model", tiny_model)
    assert rc == 0, err
    assert [r["meta"] for r in _jsonl(tmp_path / "o.jsonl")] == [{"城市": "南京"}] * 3


def test_an_invalid_byte_in_a_utf8_file_is_one_line_with_its_line(tmp_path, capsys, loads):
    src = _table(tmp_path / "pairs.csv", _rows(6))
    lines = src.read_bytes().split(b"\n")
    lines[4] = lines[4].replace("南京".encode(), b"\xff\xfe")  # line 5 of the file
    src.write_bytes(b"\n".join(lines))
    rc, err = _score(capsys, "--in", src, "--out", tmp_path / "o.csv")
    line = _one_line(err)
    assert rc == 2 and not loads
    assert str(src) in line and "line 5" in line and "0xff" in line and "iconv" in line
    assert not (tmp_path / "o.csv").exists()


def test_utf8_with_one_bad_line_is_not_read_as_gb18030(tmp_path):
    """The first non-ASCII line decides nothing alone (this one is valid GB18030): the lines
    around it do."""
    good = "\n".join(f"{i},{a},{b}" for i, (a, b) in enumerate(PAIRS * 3)).encode()
    path = tmp_path / "p.csv"
    path.write_bytes(b"id,addr1,addr2\n9,\xe7\xb4\xab\xb4,x\n" + good + b"\n")
    assert path.read_bytes().splitlines()[1].decode("gb18030")
    with pytest.raises(InputError, match=r"line 2: byte 0xb4 .*not valid UTF-8"):
        list(PairReader(path))


def test_a_file_in_neither_encoding_says_so_and_reads_when_named(tmp_path):
    """(Latin-1 text where an accent is followed by a letter reads as GB18030 pairs: such files
    need --encoding; docs/inputs.md says so.)"""
    src = _table(tmp_path / "latin1.csv", [["1", "Café 5", "Cafe 5"], ["2", "Bogotá 7", "x"]],
                 header=["id", "addr1", "addr2"], encoding="latin-1")
    with pytest.raises(InputError, match=r"line 2: byte 0xe9 .*neither UTF-8 nor GB18030.*"
                                         r"--encoding NAME.*iconv -f NAME -t UTF-8"):
        list(PairReader(src))
    with PairReader(src, encoding="latin-1") as reader:
        assert [r.obj["addr1"] for r in reader] == ["Café 5", "Bogotá 7"]


def test_a_failure_in_a_multi_line_record_resumes_at_the_record(tmp_path):
    src = tmp_path / "p.csv"
    src.write_bytes("id,addr1,addr2\n1,甲,乙\n2,\"丙\n丁".encode() + b"\xff" + "\",戊\n".encode())
    with pytest.raises(InputError) as failed:
        rows = []
        for row in PairReader(src):
            rows.append(row.obj["id"])
    assert rows == ["1"] and failed.value.line == 4 and failed.value.resume == 3


def test_excel_unicode_text_and_forced_encodings(tmp_path):
    """Excel's "Unicode text" export is UTF-16 with a BOM, tab-separated; Big5 needs a name."""
    utf16 = _table(tmp_path / "unicode.txt", _rows(2), encoding="utf-16", delimiter="\t")
    with PairReader(utf16, format="tsv") as reader:
        assert [r.obj["addr1"] for r in reader] == [PAIRS[0][0], PAIRS[1][0]]
    big5 = _table(tmp_path / "big5.csv", [["1", "臺北市信義路五段7號", "台北101"]],
                  header=["id", "addr1", "addr2"], encoding="big5")
    with PairReader(big5, encoding="big5") as reader:
        assert next(iter(reader)).obj["addr1"] == "臺北市信義路五段7號"


# ---- formats ------------------------------------------------------------------------------

def test_xlsx_in_and_out(tmp_path, capsys, tiny_model):
    import openpyxl

    src = _workbook(tmp_path / "导出.xlsx", _rows(5))
    out = tmp_path / "结果.xlsx"
    rc, err = _score(capsys, "--in", src, "--out", out, "--model", tiny_model)
    assert rc == 0, err
    sheet = openpyxl.load_workbook(out, read_only=True).worksheets[0]
    rows = list(sheet.iter_rows(values_only=True))
    assert list(rows[0]) == wire.result_columns(wire.MGEO_LABELS)
    body = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert [r["id"] for r in body] == ["1", "2", "3", "4", "5"]  # 1.0 in a cell is id "1"
    assert all(isinstance(r["score"], float) and r["truncated"] is False for r in body)
    assert json.loads(body[0]["meta"]) == {"城市": "南京"}


def test_tsv_out_is_tab_separated_and_score_takes_format(tmp_path, capsys, tiny_model):
    src = _table(tmp_path / "pairs.txt", _rows(2), delimiter="\t")
    out = tmp_path / "r.tsv"
    rc, err = _score(capsys, "--in", src, "--format", "tsv", "--out", out, "--model",
                     tiny_model)
    assert rc == 0, err
    header = out.read_text(encoding="utf-8").splitlines()[0]
    assert header.split("\t") == wire.result_columns(wire.MGEO_LABELS)


@pytest.mark.slow
def test_stdin_is_read_by_score(tmp_path, tiny_model):
    data = _table(tmp_path / "p.csv", _rows(3), encoding="gbk").read_bytes()
    out = tmp_path / "o.csv"
    proc = subprocess.run([sys.executable, "-m", "mgeo.tools.cli", "score", "--in", "-",
                           "--out", str(out), "--model", str(tiny_model), "--device", "cpu"],
                          input=data, capture_output=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert [r["id"] for r in csv.DictReader(out.open(encoding="utf-8"))] == ["1", "2", "3"]


def test_a_sheet_on_stdin(tmp_path, monkeypatch):
    import io

    data = _workbook(tmp_path / "b.xlsx", _rows(2)).read_bytes()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    with PairReader("-") as reader:
        assert reader.format == "xlsx" and [r.obj["id"] for r in reader] == ["1", "2"]


# ---- columns ------------------------------------------------------------------------------

@pytest.mark.parametrize("header", [["id", "address_a", "address_b"], ["序号", "地址A", "地址B"],
                                    ["ID", "原始地址", "标准地址"], ["Pair-ID", "Address A", "地址Ｂ"]])
def test_common_header_names_are_recognised(tmp_path, header):
    src = _table(tmp_path / "p.csv", [["7", "甲地", "乙地"]], header=header)
    with PairReader(src) as reader:
        assert [r.obj for r in reader] == [{"id": "7", "addr1": "甲地", "addr2": "乙地"}]


def test_columns_map_the_rest_and_ambiguity_asks_for_them(tmp_path, capsys, tiny_model, loads):
    src = _table(tmp_path / "p.csv", [["7", "甲地", "乙地", "x"]],
                 header=["记录", "起点", "终点", "备注"])
    out = tmp_path / "o.jsonl"
    rc, err = _score(capsys, "--in", src, "--out", out, "--model", tiny_model,
                     "--columns", "id=记录,addr1=起点,addr2=终点")
    assert rc == 0, err
    assert _jsonl(out)[0]["id"] == "7" and _jsonl(out)[0]["meta"] == {"备注": "x"}
    both = _table(tmp_path / "both.csv", [["1", "a", "b", "c"]],
                  header=["id", "地址1", "源地址", "地址2"])
    loads.clear()
    rc, err = _score(capsys, "--in", both, "--out", out)
    line = _one_line(err)
    assert rc == 2 and not loads and "--columns addr1=" in line and "地址1, 源地址" in line


def test_id_from_row(tmp_path, capsys, tiny_model, loads):
    out = tmp_path / "o.jsonl"
    src = _table(tmp_path / "no-ids.csv", [["甲地", "乙地"], ["丙地", "丁地"]],
                 header=["地址1", "地址2"])
    rc, err = _score(capsys, "--in", src, "--out", out)
    line = _one_line(err)
    assert rc == 2 and not loads and "no column for id" in line and "--id-from-row" in line
    rc, err = _score(capsys, "--in", src, "--out", out, "--model", tiny_model, "--id-from-row")
    assert rc == 0, err
    assert [r["id"] for r in _jsonl(out)] == ["row-2", "row-3"]
    assert "ids are row numbers" in err


def test_the_documented_header_names_are_the_recognised_ones():
    doc = (ROOT / "docs" / "inputs.md").read_text(encoding="utf-8")
    for role, names in HEADER_NAMES.items():
        row = next((ln for ln in doc.splitlines() if ln.startswith(f"| `{role}` |")), None)
        assert row is not None, f"docs/inputs.md has no header-names row for {role}"
        assert re.findall(r"`([^`]+)`", row)[1:] == list(names), row


# ---- mistakes: one line, the user's path, exit 2, before the model loads ---------------------

def _mistakes(tmp: Path) -> list[tuple[list[str], str, str]]:
    """(arguments, the path the message must name, what it must say)"""
    good = _table(tmp / "good.csv", _rows(2))
    (tmp / "folder").mkdir()
    (tmp / "weights.bin").write_bytes(b"x")
    lacking = _table(tmp / "lacking.csv", [["1", "甲"]], header=["编号", "地址"])
    (tmp / "old.xls").write_bytes(b"\xd0\xcf\x11\xe0")
    return [
        (["--in", str(lacking), "--out", "o.csv"], str(lacking), "no column for addr1, addr2"),
        (["--in", str(tmp / "folder"), "--out", "o.csv"], str(tmp / "folder"), "is a folder"),
        (["--in", str(tmp / "missing.csv"), "--out", "o.csv"], str(tmp / "missing.csv"),
         "does not exist"),
        (["--in", str(tmp / "old.xls"), "--out", "o.csv"], str(tmp / "old.xls"),
         "save it as .xlsx"),
        (["--in", str(good), "--out", "o.csv", "--model", str(tmp / "weights.bin")],
         str(tmp / "weights.bin"), "is a file"),
        (["--in", str(good), "--out", "/sys/o.csv"], "/sys/o.csv", "cannot write in /sys"),
        (["--in", str(good), "--out", f"{good}/o.csv"], f"{good}/o.csv",
         "is a file, not a folder"),
        (["--in", str(good), "--out", str(tmp / "folder")], str(tmp / "folder"), "is a folder"),
        (["--in", str(good), "--out", "o.json"], "o.json", "name it .jsonl"),
        (["--in", str(good), "--out", "o.txt"], "o.txt", ".csv, .tsv, .jsonl or .xlsx"),
        (["--in", str(good), "--out", str(good)], str(good), "is also the input"),
    ]


@pytest.mark.parametrize("case", range(11))
def test_each_mistake_is_one_line_naming_the_users_path_before_the_model(tmp_path, capsys,
                                                                          loads, case,
                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, path, says = _mistakes(tmp_path)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc, err = _score(capsys, *args)
    line = _one_line(err)
    assert rc == 2 and path in line and says in line, line
    assert not loads, f"the model was loaded before answering: {line}"
    assert not re.search(r"/\.[^/ ]+\.[a-z0-9_]{8}", line), line  # no temporary file named
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_collect_checks_out_before_reading_the_topic(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    proc = subprocess.run([sys.executable, "-m", "mgeo.tools.cli", "collect", "--out",
                           "/sys/r.csv", "--bootstrap-servers", closed, "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--out /sys/r.csv: cannot write in /sys" in proc.stderr.strip().splitlines()[-1]


# ---- files others can read, whole or not at all ------------------------------------------------

def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_results_get_the_umasks_permissions(tmp_path, capsys, tiny_model, mask):
    from mgeo.writers import write_results

    old = os.umask(mask)
    try:
        src = _table(tmp_path / "p.csv", _rows(2))
        for name in ("r.csv", "r.jsonl", "r.xlsx"):
            rc, err = _score(capsys, "--in", src, "--out", tmp_path / name, "--model",
                             tiny_model)
            assert rc == 0, err
            assert _mode(tmp_path / name) == 0o666 & ~mask, name
        write_results(tmp_path / "collected.csv", [], list(wire.MGEO_LABELS))  # demo, collect
        assert _mode(tmp_path / "collected.csv") == 0o666 & ~mask
        assert main(["synth", "--pairs", "10", "--out", str(tmp_path / "s.csv")]) == 0
        assert _mode(tmp_path / "s.csv") == 0o666 & ~mask
    finally:
        os.umask(old)


@pytest.mark.slow
def test_an_existing_out_is_never_left_half_written(tmp_path, tiny_model):
    """stdin cannot be checked ahead: a bad byte after 300 rows (and chunks written) fails the
    run, and the previous results stay as they were."""
    out = tmp_path / "results.csv"
    out.write_text("previous results\n", encoding="utf-8")
    good = _table(tmp_path / "p.csv", _rows(300)).read_bytes()
    data = good + "999,坏".encode() + b"\xff\n"
    proc = subprocess.run([sys.executable, "-m", "mgeo.tools.cli", "score", "--in", "-",
                           "--out", str(out), "--model", str(tiny_model), "--device", "cpu",
                           "--chunk-pairs", "50"],
                          input=data, capture_output=True, cwd=ROOT, timeout=300)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "stdin: line 302" in err and "nothing written" in err and "Traceback" not in err
    assert out.read_text(encoding="utf-8") == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "results.csv"]


# ---- a pair the model fails on (issue 18) -----------------------------------------------------

class _Scored:
    def __init__(self, probs, truncated):
        self.probs, self.truncated = probs, truncated


class PoisonEngine(RuleEngine):
    """The rule engine with the `Engine` surface `mgeo score` used before: `score` fails the
    whole call when one pair holds the poison, as a model that cannot score that pair does."""

    def score(self, pairs):
        rows = self.score_rows(pairs)
        return [_Scored(dict(zip(self.labels, p)), t) for p, t in zip(rows.probs, rows.truncated)]

    def close(self):
        pass


def test_score_answers_an_unscorable_pair_scoring_failed_and_the_rest(tmp_path, capsys,
                                                                      monkeypatch):
    from mgeo.worker.inference.engine import Engine

    monkeypatch.setattr(Engine, "from_settings", classmethod(lambda cls, s: PoisonEngine()))
    rows = _rows(6)
    rows[3][1] = "有毒的地址"
    src = _table(tmp_path / "p.csv", rows)
    out = tmp_path / "o.jsonl"
    rc, err = _score(capsys, "--in", src, "--out", out)
    assert rc == 0, err
    results = _jsonl(out)
    assert [r["id"] for r in results] == ["1", "2", "3", "4", "5", "6"]
    assert results[3]["error"]["code"] == wire.SCORING_FAILED
    assert all("score" in r for i, r in enumerate(results) if i != 3)
    assert "1 the model failed on" in err


# ---- models whose labels are not MGeo's ---------------------------------------------------------

@pytest.fixture(scope="module")
def label_model(tmp_path_factory) -> Path:
    from mgeo.tools.models import build_random_model

    return build_random_model(tmp_path_factory.mktemp("labels"), layers=1, hidden=32, heads=2,
                              intermediate=64, labels=("LABEL_0", "LABEL_1", "LABEL_2"))


def test_other_labels_are_refused_at_load_with_what_to_pass(tmp_path, capsys, label_model,
                                                            loads):
    src = _table(tmp_path / "p.csv", _rows(2))
    out = tmp_path / "o.jsonl"
    rc, err = _score(capsys, "--in", src, "--out", out, "--model", label_model)
    line = _one_line(err)
    assert rc == 2 and not loads and not out.exists()
    assert "LABEL_0, LABEL_1, LABEL_2" in line
    assert "--label-map LABEL_0=not_match,LABEL_1=partial_match,LABEL_2=exact_match" in line
    rc, err = _score(capsys, "--in", src, "--out", out, "--model", label_model, "--label-map",
                     "LABEL_0=not_match,LABEL_1=partial_match,LABEL_2=exact_match")
    assert rc == 0, err
    assert set(_jsonl(out)[0]["probs"]) == set(wire.MGEO_LABELS)


def test_the_worker_refuses_them_too(label_model):
    from mgeo.settings import ModelSettings
    from mgeo.worker.inference.engine import Engine

    with pytest.raises(ValueError, match="LABEL_0, LABEL_1, LABEL_2.*--label-map"):
        Engine.from_settings(ModelSettings(model=label_model, device="cpu"))
    s = ModelSettings(model=label_model, device="cpu",
                      label_map="LABEL_0=not_match,LABEL_1=partial_match,LABEL_2=exact_match")
    with Engine.from_settings(s) as engine:
        assert engine.labels == list(wire.MGEO_LABELS) and engine.positive == ["exact_match"]


# ---- counts and the whole-file check ----------------------------------------------------------

def test_count_reads_every_byte(tmp_path):
    src = _table(tmp_path / "p.csv", _rows(2000), encoding="gbk")
    assert count_rows(src) == 2000
    data = src.read_bytes()
    src.write_bytes(data[:-30] + b"\xff" + data[-29:])  # in the last row
    with pytest.raises(InputError, match=r"line 2001: byte 0xff"):
        count_rows(src)
    with PairReader(src) as reader:  # opening reads only the header and a look ahead
        assert reader.encoding == "gb18030"


def test_a_workbook_named_csv_says_so(tmp_path):
    src = _workbook(tmp_path / "book.xlsx", _rows(1))
    renamed = tmp_path / "book.csv"
    src.rename(renamed)
    with pytest.raises(InputError, match="is an Excel workbook.*--format xlsx"):
        PairReader(renamed)
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(orjson.dumps({"id": "1", "addr1": "甲", "addr2": "乙"}) + b"\n")
    with pytest.raises(InputError, match="--id-from-row is for tables"):
        PairReader(jsonl, id_from_row=True)


@pytest.mark.slow
def test_the_documented_example_runs(tmp_path):
    """docs/inputs.md's GBK Excel export, scored by the commands the page shows."""
    import shlex
    import shutil

    import openpyxl

    doc = (ROOT / "docs" / "inputs.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- tested: [^>]*test_the_documented_example_runs -->\n```sh\n(.*?)```",
                      doc, re.S)
    assert block, "docs/inputs.md lost its tested example"
    (tmp_path / "tests" / "data").mkdir(parents=True)
    shutil.copy(ROOT / "tests" / "data" / "excel_export_gbk.csv", tmp_path / "tests" / "data")
    mgeo = str(Path(sys.executable).parent / "mgeo")
    for line in block.group(1).splitlines():
        args = shlex.split(line)
        assert args[0] == "mgeo", line
        proc = subprocess.run([mgeo, *args[1:]], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{line}\n{proc.stderr}"
        assert "read as CSV, GB18030" in proc.stderr, proc.stderr
    rows = list(csv.DictReader((tmp_path / "results.csv").open(encoding="utf-8")))
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 9)]
    assert json.loads(rows[0]["meta"]) == {"备注": "MGeo示例"}
    assert rows[0]["label"] == "exact_match" and rows[1]["label"] == "not_match"
    sheet = openpyxl.load_workbook(tmp_path / "结果.xlsx", read_only=True).worksheets[0]
    assert len(list(sheet.iter_rows(values_only=True))) == 9
