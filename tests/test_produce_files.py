"""ETL files through `mgeo produce` and `publish_pairs` on a real broker (issue 21): GBK and
GB18030 tables with Chinese headers, a file that fails publishes nothing, a stream that fails
half-way says what went out and where to resume, and the input is checked before Kafka."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import uuid

import orjson
import pytest

from conftest import ROOT, read_messages
from mgeo import wire
from mgeo.kafka import create_topics
from mgeo.producer import publish_pairs
from mgeo.readers import InputError
from mgeo.tools.cli import main
from pairfiles import rows as _rows, table as _table

pytestmark = pytest.mark.broker


def _topic(bootstrap: str) -> str:
    name = f"pairs-{uuid.uuid4().hex[:8]}"
    create_topics({"bootstrap.servers": bootstrap}, {name: 1})
    return name


def _published(bootstrap: str, topic: str, expect: int) -> list[dict]:
    return [orjson.loads(m.value()) for m in read_messages(bootstrap, {topic: 1}, expect)]


def _expected(n: int, extra: str = "") -> list[dict]:
    return [{"id": r[0], "addr1": r[1], "addr2": r[2], "meta": {"城市": r[3]}}
            for r in _rows(n, extra)]


CASES = [("gbk", ".csv", ""), ("gb18030", ".tsv", "𠮷野家")]


@pytest.mark.parametrize("encoding,suffix,extra", CASES)
def test_produce_publishes_gbk_and_gb18030_tables(bootstrap, tmp_path, capsys, encoding,
                                                  suffix, extra):
    src = _table(tmp_path / f"导出{suffix}", _rows(5, extra), encoding=encoding,
                 delimiter="\t" if suffix == ".tsv" else ",")
    topic = _topic(bootstrap)
    rc = main(["produce", str(src), "--bootstrap-servers", bootstrap, "--input-topic", topic,
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "5 delivered" in err and "GB18030" in err
    assert _published(bootstrap, topic, 5) == _expected(5, extra)


@pytest.mark.parametrize("encoding,suffix,extra", CASES)
def test_publish_pairs_reads_a_file(bootstrap, tmp_path, encoding, suffix, extra):
    src = _table(tmp_path / f"导出{suffix}", _rows(5, extra), encoding=encoding,
                 delimiter="\t" if suffix == ".tsv" else ",")
    topic = _topic(bootstrap)
    report = publish_pairs(src, bootstrap_servers=bootstrap, topic=topic)
    assert report.ok and report.delivered == 5, report.errors
    assert _published(bootstrap, topic, 5) == _expected(5, extra)


def test_a_file_that_fails_publishes_nothing(bootstrap, tmp_path, capsys):
    src = _table(tmp_path / "p.csv", _rows(500))
    lines = src.read_bytes().split(b"\n")
    lines[500] = lines[500].replace("南京".encode(), b"\xff")  # row 500, line 501: the last
    src.write_bytes(b"\n".join(lines))
    topic = _topic(bootstrap)
    rc = main(["produce", str(src), "--bootstrap-servers", bootstrap, "--input-topic", topic,
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert f"{src}: line 501: byte 0xff" in err and "nothing published" in err
    with pytest.raises(InputError, match="line 501"):
        publish_pairs(src, bootstrap_servers=bootstrap, topic=topic)
    assert _published(bootstrap, topic, 0) == []


@pytest.mark.slow
def test_a_stream_that_fails_half_way_says_where_to_resume(bootstrap, tmp_path):
    src = _table(tmp_path / "p.csv", _rows(300))
    lines = src.read_bytes().split(b"\n")
    broken = list(lines)
    broken[201] = broken[201].replace("南京".encode(), b"\xff")  # line 202, row id 201
    topic = _topic(bootstrap)
    args = [sys.executable, "-m", "mgeo.tools.cli", "produce", "-", "--bootstrap-servers",
            bootstrap, "--input-topic", topic, "--no-progress"]
    first = subprocess.run(args, input=b"\n".join(broken), capture_output=True, cwd=ROOT,
                           timeout=120)
    err = first.stderr.decode()
    assert first.returncode == 2 and "Traceback" not in err, err
    assert "stdin: line 202" in err and "200 rows before line 202 were published" in err
    assert "--start-line 202" in err
    rest = subprocess.run([*args, "--start-line", "202"], input=b"\n".join(lines),
                          capture_output=True, cwd=ROOT, timeout=120)
    assert rest.returncode == 0, rest.stderr.decode()
    assert "100 delivered" in rest.stderr.decode()
    ids = [m["id"] for m in _published(bootstrap, topic, 300)]
    assert ids == [str(i) for i in range(1, 301)]  # each row once, in order


def test_produce_checks_the_file_before_kafka(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed
    src = _table(tmp_path / "p.csv", [["1", "甲"]], header=["编号", "地址"])
    proc = subprocess.run([sys.executable, "-m", "mgeo.tools.cli", "produce", str(src),
                           "--bootstrap-servers", closed, "--no-progress"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"mgeo produce: {src}: no column for addr1, addr2")


def test_collected_results_get_the_umasks_permissions(bootstrap, tmp_path):
    topic = _topic(bootstrap)
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap})
    p.produce(topic, wire.encode_result("a", {"not_match": 0.2, "partial_match": 0.3,
                                              "exact_match": 0.5}, ["exact_match"], "m", False))
    assert p.flush(30) == 0
    old = os.umask(0o022)
    try:
        out = tmp_path / "r.xlsx"
        assert main(["collect", "--bootstrap-servers", bootstrap, "--output-topic", topic,
                     "--out", str(out), "--expect", "1", "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644

