"""End to end on a real broker: `mgeo produce` -> `mgeo worker` -> `mgeo collect`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from conftest import ASSIGNED, ROOT, committed_offsets, worker_env
from mgeo import wire
from mgeo.producer.collect import Collector

pytestmark = [pytest.mark.broker, pytest.mark.slow]

N_PAIRS = 5000


def _mgeo(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mgeo.tools.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _end_offsets(bootstrap: str, topic: str, expect: int) -> dict[int, int]:
    """True end offsets, read from the data (Tansu's high watermark is not exact)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(4)])
    ends: dict[int, int] = {}
    seen = 0
    for _ in range(200):
        for m in c.consume(1000, 0.5):
            if m.error() is None:
                ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
                seen += 1
        if seen >= expect:
            break
    c.close()
    assert seen == expect, f"read {seen} of {expect} input messages"
    return ends


def _labels_of(model_dir) -> set[str]:
    cfg = json.loads((model_dir / "config.json").read_text())
    return set(cfg["id2label"].values())


def test_pipeline_every_id_once_and_offsetscommitted_offsets(bootstrap, topics, tiny_model, tmp_path,
                                                      start_worker):
    pairs_csv = tmp_path / "pairs.csv"
    with open(pairs_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "addr1", "addr2", "batch"])
        for i in range(N_PAIRS):
            w.writerow([f"id-{i}", f"浙江省杭州市西湖区文三路{i}号", f"杭州市文三路{i % 97}号大厦",
                        "b1"])
    env = worker_env(bootstrap, topics, tiny_model)
    produced = _mgeo("produce", str(pairs_csv), env=env)
    assert produced.returncode == 0, produced.stderr
    assert f"{N_PAIRS} delivered" in produced.stderr

    worker = start_worker(env)
    out_csv = tmp_path / "results.csv"
    collected = _mgeo("collect", "--out", str(out_csv), "--expect", str(N_PAIRS),
                      "--timeout", "120", env=env)
    assert collected.returncode == 0, collected.stderr + worker.log()
    assert worker.stop() == 0, worker.log()

    rows = list(csv.DictReader(open(out_csv, encoding="utf-8")))
    assert sorted(r["id"] for r in rows) == sorted(f"id-{i}" for i in range(N_PAIRS))
    labels = _labels_of(tiny_model)
    for r in rows:
        assert 0.0 <= float(r["score"]) <= 1.0 and r["label"] in labels
        assert json.loads(r["meta"]) == {"batch": "b1"}
        assert abs(sum(float(r[f"prob_{lab}"]) for lab in labels) - 1.0) < 1e-4

    # Exactly once on the topic itself, not only after the collector's de-duplication.
    raw = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    raw.collect(N_PAIRS, timeout=30)
    assert raw.messages == N_PAIRS and raw.duplicates == 0
    raw.close()

    ends = _end_offsets(bootstrap, topics["input"], N_PAIRS)
    assert committed_offsets(bootstrap, topics["group"], topics["input"], expect=ends) == ends

    # A second start reprocesses nothing: only the new sentinels (one a partition) get answers.
    worker2 = start_worker(env)
    worker2.wait_for(ASSIGNED, timeout=90)
    p = Producer({"bootstrap.servers": bootstrap})
    for part in range(4):
        p.produce(topics["input"], partition=part, key=f"s{part}".encode(),
                  value=wire.encode_request(f"sentinel-{part}", "上海市静安区", "静安区"))
    assert p.flush(30) == 0
    again = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    again.collect(N_PAIRS + 4, timeout=60)
    again.close()
    assert {f"sentinel-{i}" for i in range(4)} <= set(again.results), worker2.log()
    assert again.messages == N_PAIRS + 4 and again.duplicates == 0
    assert worker2.stop() == 0, worker2.log()


def test_bad_input_is_answered_or_dead_lettered_and_the_worker_goes_on(
        bootstrap, topics, tiny_model, start_worker):
    big_meta = "x" * 70_000
    cases = [  # (key, value, expected: "dlq:<reason>" | "error:<code>" | "ok")
        (b"k1", b"\xff\xfe\x00 garbage", "dlq:not_json"),
        (b"k2", b"[1,2,3]", "dlq:not_object"),
        (b"k3", b'{"addr1": "a", "addr2": "b"}', "dlq:missing_id"),
        (b"k4", b'{"id": "e1", "addr1": "", "addr2": "b"}', "error:empty_address"),
        (b"k5", b'{"id": "e2", "addr1": 12, "addr2": "b"}', "error:invalid_type"),
        (b"k6", orjson.dumps({"id": "e3", "addr1": "a", "addr2": "b", "meta": big_meta}),
         "error:message_too_large"),
        (b"k7", orjson.dumps({"id": "e4", "addr1": "路" * 2000, "addr2": "b"}),
         "error:address_too_long"),
    ]
    valid = [(f"v{i}".encode(), wire.encode_request(f"v{i}", "广州市天河区体育东路1号",
                                                    f"体育东路{i}号"), "ok") for i in range(20)]
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000})
    for key, value, _ in valid[:10] + cases + valid[10:]:
        p.produce(topics["input"], key=key, value=value, headers=[("trace", key)])
    assert p.flush(30) == 0

    worker = start_worker(worker_env(bootstrap, topics, tiny_model))
    results = Collector({"bootstrap.servers": bootstrap}, topics["output"])
    results.collect(24, timeout=120)
    errors = {rid: r["error"]["code"] for rid, r in results.results.items() if "error" in r}
    assert errors == {"e1": "empty_address", "e2": "invalid_type", "e3": "message_too_large",
                      "e4": "address_too_long"}, worker.log()
    assert {f"v{i}" for i in range(20)} <= set(results.results)

    dlq = Consumer({"bootstrap.servers": bootstrap, "group.id": "dlq-reader"})
    dlq.assign([TopicPartition(topics["dlq"], 0, OFFSET_BEGINNING)])
    letters = []
    for _ in range(60):
        letters += [m for m in dlq.consume(10, 0.5) if m.error() is None]
        if len(letters) >= 3:
            break
    dlq.close()
    by_key = {m.key(): m for m in letters}
    assert len(letters) == 3 and set(by_key) == {b"k1", b"k2", b"k3"}
    originals = {k: v for k, v, _ in cases}
    for key, m in by_key.items():
        hdrs = dict(m.headers())
        assert m.value() == originals[key]  # value unchanged
        assert hdrs["trace"] == key
        assert hdrs[wire.DLQ_REASON].decode() == dict(
            (k, e.split(":")[1]) for k, _, e in cases)[key]
        assert hdrs[wire.DLQ_TOPIC].decode() == topics["input"]
        assert int(hdrs[wire.DLQ_OFFSET]) >= 0 and hdrs[wire.DLQ_PARTITION]

    # The worker is still going: a valid pair sent now is answered.
    p.produce(topics["input"], key=b"late", value=wire.encode_request("late", "南京市", "南京"))
    assert p.flush(30) == 0
    results.collect(25, timeout=60)
    results.close()
    assert "late" in results.results and worker.proc.poll() is None
    # Results keep the request's key and headers.
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": "hdr-reader"})
    check.assign([TopicPartition(topics["output"], p_, OFFSET_BEGINNING) for p_ in range(4)])
    keyed = {}
    for _ in range(40):
        for m in check.consume(100, 0.5):
            if m.error() is None:
                keyed[orjson.loads(m.value())["id"]] = m
        if len(keyed) >= 25:
            break
    check.close()
    assert keyed["v3"].key() == b"v3" and dict(keyed["v3"].headers())["trace"] == b"v3"
    assert worker.stop() == 0, worker.log()
