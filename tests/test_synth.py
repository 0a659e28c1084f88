"""The synthetic pair generator: reproducible, labelled sensibly, shaped like real traffic."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from mgeo import synth
from mgeo.cli import main as cli_main

SAMPLE = Path(synth.__file__).parent / "data" / "sample_pairs.csv"


@pytest.fixture(scope="module")
def pairs():
    return synth.generate_pairs(4000, seed=11)


@pytest.fixture(scope="module")
def places():
    return list(synth._iter_pairs(3000, 5))


def test_same_seed_same_pairs_different_seed_different_pairs():
    assert synth.generate_pairs(300, seed=3) == synth.generate_pairs(300, seed=3)
    a, b = synth.generate_pairs(300, seed=3), synth.generate_pairs(300, seed=4)
    assert sum(x["addr1"] == y["addr1"] for x, y in zip(a, b)) < 5


def test_pairs_have_the_four_fields_and_known_labels(pairs):
    for p in pairs:
        assert set(p) == {"id", "addr1", "addr2", "label"}
        assert p["label"] in synth.LABELS
        assert p["addr1"].strip() and p["addr2"].strip()
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_label_mix_is_near_real_traffic(pairs):
    share = {k: v / len(pairs) for k, v in Counter(p["label"] for p in pairs).items()}
    for label, target in synth.MIX.items():
        assert abs(share[label] - target) < 0.03, (label, share)


def _house_numbers(addr: str) -> list[int]:
    """Numbers written as house numbers (`363号`, not `3号楼`)."""
    return sorted(int(n) for n in re.findall(r"(\d+)号(?!楼)", synth.normalize(addr)))


def _rooms(addr: str) -> list[int]:
    return sorted(int(n) for n in re.findall(r"\d{3,4}", synth.normalize(addr))
                  if not re.search(n + "号(?!楼)", synth.normalize(addr)))


def test_exact_pairs_are_one_place_written_two_ways(pairs):
    exact = [p for p in pairs if p["label"] == "exact_match"]
    assert len(exact) > 300
    for p in exact:
        assert _house_numbers(p["addr1"]) == _house_numbers(p["addr2"]), p
    # Written differently (that is the point of the pair), and not only by spaces.
    differ = sum(synth.normalize(p["addr1"]) != synth.normalize(p["addr2"]) for p in exact)
    assert differ / len(exact) > 0.95


def test_not_match_pairs_are_different_places(places):
    negatives = [(row, a, b) for row, a, b in places if row["label"] == "not_match"]
    assert len(negatives) > 1000
    for row, a, b in negatives:
        assert synth._key(a) != synth._key(b)
        assert synth.normalize(row["addr1"]) != synth.normalize(row["addr2"])
    # Hard negatives: many share the road, the district or the POI kind with their partner.
    same_road = sum(a.road is not None and a.road == b.road and a.unit == b.unit
                    for _, a, b in negatives)
    same_district = sum(a.unit == b.unit for _, a, b in negatives)
    assert same_road / len(negatives) > 0.1
    assert same_district / len(negatives) > 0.3
    for row, a, b in negatives:
        if a.road is not None and a.road == b.road and a.unit == b.unit and a.num and b.num:
            assert abs(a.num - b.num) >= 20, row  # same road: a house number far away


def test_partial_pairs_share_a_container(places):
    partial = [(row, a, b) for row, a, b in places if row["label"] == "partial_match"]
    assert len(partial) > 800
    for row, a, b in partial:
        assert synth._key(a) != synth._key(b), row
        assert a.unit == b.unit
        assert ((a.road and a.road == b.road) or (a.compound and a.compound == b.compound)
                or (a.village and a.village == b.village)
                or (a.poi is not None and a.poi == b.poi)), row


def test_exact_pairs_use_the_real_variations(pairs):
    joined = "".join(p["addr1"] + p["addr2"] for p in pairs)
    assert re.search("[０-９]", joined), "full-width digits"
    assert re.search("[一二三四五六七八九十]+(号|栋|单元|楼)", joined), "Chinese numerals"
    assert " " in joined and re.search("[，,]", joined), "spacing and punctuation"
    assert re.search(r"\d+-\d+-\d+", joined), "3-2-1203 for 3栋2单元1203室"
    exact = [p for p in pairs if p["label"] == "exact_match"]
    abbreviated = sum(("人社局" in p["addr1"]) != ("人社局" in p["addr2"])
                      or ("工行" in p["addr1"]) != ("工行" in p["addr2"]) for p in exact)
    assert abbreviated > 0


def test_length_distribution_is_close_to_real_traffic(tmp_path):
    pytest.importorskip("transformers")
    from worker.tokenizer import build_char_tokenizer

    many = synth.generate_pairs(20_000, seed=0)
    chars = [len(p["addr1"]) for p in many] + [len(p["addr2"]) for p in many]
    assert 16 <= statistics.mean(chars) <= 19

    tok = build_char_tokenizer(tmp_path)
    enc = tok([p["addr1"] for p in many], [p["addr2"] for p in many])["input_ids"]
    lengths = sorted(len(x) for x in enc)

    def pct(q):
        return lengths[int(q * (len(lengths) - 1))]

    # Real traffic (CCKS 2021): mean 36.5, p50 35, p90 52, p95 57, p99 67, max 98.
    assert 34 <= statistics.mean(lengths) <= 39
    assert 33 <= pct(0.5) <= 37
    assert 48 <= pct(0.9) <= 56
    assert 53 <= pct(0.95) <= 61
    assert 61 <= pct(0.99) <= 73
    assert lengths[-1] <= 128


def test_numerals_round_trip():
    for n in (0, 7, 10, 12, 20, 105, 110, 363, 1000, 2010, 9999):
        assert synth.numbers_in(synth.chinese_number(n)) == [n]
    assert synth.numbers_in("３６３号３-2-1203") == [363, 3, 2, 1203]
    assert synth.short_name("北京市") == "北京"
    assert synth.short_name("延边朝鲜族自治州") == "延边"
    assert synth.short_name("内蒙古自治区") == "内蒙古"


def test_run_writes_csv_and_jsonl_byte_identical_for_a_seed(tmp_path):
    for ext in ("csv", "jsonl"):
        first, second = tmp_path / f"a.{ext}", tmp_path / f"b.{ext}"
        assert cli_main(["synth", "--out", str(first), "--pairs", "200", "--seed", "9"]) == 0
        assert cli_main(["synth", "--out", str(second), "--pairs", "200", "--seed", "9"]) == 0
        assert first.read_bytes() == second.read_bytes()
    rows = list(csv.DictReader((tmp_path / "a.csv").open(encoding="utf-8")))
    assert list(rows[0]) == ["id", "addr1", "addr2", "label"] and len(rows) == 200
    lines = (tmp_path / "a.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x) for x in lines] == rows


def test_synth_does_not_import_torch():
    code = ("import sys, mgeo.synth as s; s.generate_pairs(20); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundled_sample_is_current_small_and_starts_with_the_references():
    assert SAMPLE.stat().st_size < 60_000
    rows = list(csv.DictReader(SAMPLE.open(encoding="utf-8")))
    assert 250 <= len(rows) <= 350
    assert rows[:3] == synth.REFERENCE_PAIRS
    assert rows == synth.sample_pairs(), "regenerate with scripts/build-default-model --sample"
