"""The synthetic pair generator: reproducible, labelled by the rules of training/LABELLING.md,
producing each phenomenon real pairs show, and shaped like real traffic."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from mgeo.tools.cli import main as cli_main
from mgeo.training import admin, devset, synth
from mgeo.training.landmarks import LANDMARKS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tools" / "data" / "sample_pairs.csv"
DEV = ROOT / "training" / "data" / "dev_pairs.csv"
TAG_LABEL = {"E": "exact_match", "P": "partial_match", "N": "not_match"}


@pytest.fixture(scope="module")
def pairs():
    return synth.generate_pairs(4000, seed=11)


@pytest.fixture(scope="module")
def drawn():
    """(row, Pair) for 8,000 pairs, grouped by rule tag."""
    by_tag = defaultdict(list)
    for row, pair in synth.iter_pairs(8000, 5):
        by_tag[pair.tag].append((row, pair))
    return by_tag


def test_same_seed_same_pairs_different_seed_different_pairs():
    assert synth.generate_pairs(300, seed=3) == synth.generate_pairs(300, seed=3)
    a, b = synth.generate_pairs(300, seed=3), synth.generate_pairs(300, seed=4)
    assert sum(x["addr1"] == y["addr1"] for x, y in zip(a, b)) < 5


def test_pairs_have_the_four_fields_and_known_labels(pairs):
    for p in pairs:
        assert set(p) == {"id", "addr1", "addr2", "label"}
        assert p["label"] in synth.LABELS
        assert p["addr1"].strip() and p["addr2"].strip()
        assert synth.normalize(p["addr1"]) != synth.normalize(p["addr2"]), p
    assert len({p["id"] for p in pairs}) == len(pairs)


def test_label_mix_is_the_configured_one(pairs):
    share = {k: v / len(pairs) for k, v in Counter(p["label"] for p in pairs).items()}
    for label, target in synth.MIX.items():
        assert abs(share[label] - target) < 0.03, (label, share)


def test_every_rule_is_generated_with_its_label(drawn):
    tags = {f"E{i}" for i in range(1, 8)} | {f"P{i}" for i in range(1, 6)} | \
        {f"N{i}" for i in range(0, 7)}
    assert set(drawn) == tags
    for tag, rows in drawn.items():
        assert all(row["label"] == TAG_LABEL[tag[0]] for row, _ in rows), tag
        assert len(rows) >= 30 or tag in ("E7", "E3", "E6", "E1"), (tag, len(rows))


def _texts(rows):
    return [row["addr1"] + " | " + row["addr2"] for row, _ in rows]


def _share(rows, test) -> float:
    return sum(1 for row, pair in rows if test(row, pair)) / len(rows)


def _one_sided(pair, field: str) -> bool:
    return (getattr(pair.a, field) is None) != (getattr(pair.b, field) is None)


def test_exact_pairs_are_one_place(drawn):
    """E1-E6: both sides keep the place's road and county, and at most one side adds what the
    rule allows; E7 pairs a public landmark with its published address."""
    for tag in ("E1", "E2", "E3", "E4", "E5", "E6"):
        for row, p in drawn[tag]:
            assert p.a.area.unit == p.b.area.unit and p.a.road == p.b.road, row
            assert p.a.num == p.b.num or None in (p.a.num, p.b.num), row
            assert p.a.part == p.b.part and p.a.inner in (p.b.inner, None) or \
                p.b.inner is None, row
    landmark_names = {n for *_, names in LANDMARKS for n in names}
    for row, p in drawn["E7"]:
        assert {row["addr1"].split("(")[0].split("（")[0], row["addr2"].split("(")[0]} & \
            landmark_names or any(n in row["addr1"] + row["addr2"] for n in landmark_names)


def test_one_sided_details_are_exact(drawn):
    """E4: a tenant, a person or a delivery note on one side; E5: a floor, room, unit or gate
    on one side (the previous generator called these partial)."""
    e4 = drawn["E4"]
    assert _share(e4, lambda r, p: _one_sided(p, "extra")) > 0.2
    assert _share(e4, lambda r, p: _one_sided(p, "inner")) > 0.2
    assert _share(e4, lambda r, p: bool(p.a.name) != bool(p.b.name)) > 0.1
    joined = "".join(_texts(e4))
    assert re.search("(女士|先生)", joined) and "有限公司" in joined
    assert re.search("放(菜鸟驿站|快递柜|门卫|前台)|送货上门|电联", joined)
    e5 = drawn["E5"]
    for field in ("gate", "room", "floor"):
        assert _share(e5, lambda r, p, f=field: _one_sided(p, f)) > 0.05, field
    assert re.search(r"\((东|西|南|北)门\)|(南|北)广场|出站口", "".join(_texts(e5)))


def test_locating_notes_aliases_admin_and_surface_variants(drawn):
    e6 = "".join(_texts(drawn["E6"]))
    assert re.search(r"店[)）]", e6) and re.search("交叉口|交口|交汇处|路口|十字", e6)
    assert re.search(r"(对面|旁|附近|[东西南北]\d+米)", e6)
    e3 = drawn["E3"]
    assert _share(e3, lambda r, p: r["addr1"] != r["addr2"]) == 1.0
    assert re.search("人社局|工行|建行|一中|一院|中医院|[^\\s]大[^学道街厦]", "".join(_texts(e3)))
    e1 = "".join(_texts(drawn["E1"]))
    assert re.search("高新区|开发区|经开区|新区", e1) and re.search("县", e1)
    e2 = "".join(_texts(drawn["E2"]))
    assert re.search("[０-９]", e2) and re.search("[一二三四五六七八九十]+(号|栋|单元|楼|层)", e2)
    assert " " in e2 and re.search("[，,、]", e2)


def test_surface_variations_of_real_data(pairs):
    joined = "".join(p["addr1"] + p["addr2"] for p in pairs)
    assert re.search("[０-９]", joined), "full-width digits"
    assert re.search("[一二三四五六七八九十]+(号|栋|单元|楼)", joined), "Chinese numerals"
    assert " " in joined and re.search("[，,]", joined), "spacing and punctuation"
    assert re.search(r"\d+-\d+-\d+", joined), "3-2-1203 for 3栋2单元1203室"
    assert re.search(r"\d+#楼?", joined) and re.search(r"\d+F|F\d+", joined), "8#楼, 23F"
    assert re.search("(市|区|县)(.{2,5}(市|区|县))\\2", joined) or \
        re.search(r"(.{2,4}[区县市])\1", joined), "repeated segment"


def test_partial_pairs_contain_or_share_a_building(drawn):
    for row, p in drawn["P1"]:  # a road without a number, and a place on it
        road, inside = (p.a, p.b) if p.a.kind == "road" else (p.b, p.a)
        assert road.num is None and not road.name and inside.road == road.road, row
    for row, p in drawn["P2"]:  # a complex and a part of it
        assert p.a.name == p.b.name and p.a.part is None and p.a.inner is None, row
        assert p.b.part is not None or p.b.inner is not None, row
    for row, p in drawn["P3"]:  # two sub-places of one building
        assert p.a.road == p.b.road and p.a.num == p.b.num and p.a != p.b, row
    for row, p in drawn["P4"]:  # an area or village, and a place in it
        assert p.a.kind in ("area", "zone", "village") and p.a.area.unit == p.b.area.unit, row
    for row, p in drawn["P5"]:  # a POI and one of its facilities
        assert p.a.name == p.b.name and p.a.inner is None and p.b.inner.kind == "facility"


def test_negatives_are_hard_and_told_apart_by_their_text(drawn):
    for row, p in drawn["N1"]:  # same road, another number, both written
        assert p.a.road == p.b.road and p.a.num != p.b.num
        nums = (synth.numbers_in(row["addr1"]), synth.numbers_in(row["addr2"]))
        assert p.a.num in nums[0] + nums[1] and p.b.num in nums[0] + nums[1], row
    near = _share(drawn["N1"], lambda r, p: abs(p.a.num - p.b.num) < 10 or
                  sorted(str(p.a.num)) == sorted(str(p.b.num)) or
                  str(p.a.num) in str(p.b.num) or str(p.b.num) in str(p.a.num))
    assert near > 0.4, near
    for row, p in drawn["N2"]:  # the same name elsewhere
        assert p.a.area != p.b.area or p.a.name != p.b.name or p.a.branch != p.b.branch, row
    assert _share(drawn["N3"], lambda r, p: p.a.part is not None and p.b.part is not None
                  and p.a.part != p.b.part) > 0.3
    assert re.search("对面|旁|门外|米", "".join(_texts(drawn["N3"])))
    assert _share(drawn["N4"], lambda r, p: bool(p.a.road) and bool(p.b.road)
                  and p.a.road != p.b.road and p.a.road[:2] == p.b.road[:2]) > 0.5
    for row, p in drawn["N5"]:  # the same road and number in another county or city
        ua, ub = p.a.area.unit, p.b.area.unit
        assert p.a.road == p.b.road and p.a.num == p.b.num and ua != ub
        level = "county" if ua.city_name == ub.city_name else "city_name"
        text = row["addr1"] + row["addr2"]
        assert short_name_in(getattr(ua, level), text) and \
            short_name_in(getattr(ub, level), text), row
    for row, p in drawn["N6"]:
        assert p.a.area.unit == p.b.area.unit


def short_name_in(name: str, text: str) -> bool:
    return name in text or synth.short_name(name) in text


def test_admin_variants():
    units = admin.units_by_city()
    jiangning = next(u for u in units["南京市"] if u.county == "江宁区")
    assert "江宁县" in admin.old_county_names(jiangning)
    keqiao = next(u for u in units["绍兴市"] if u.county == "柯桥区")
    assert admin.old_county_names(keqiao) == ("绍兴县",)
    xiangyang = next(u for u in units["襄阳市"])
    assert admin.old_city_names(xiangyang) == ("襄樊市",)
    hongshan = next(u for u in units["武汉市"] if u.county == "洪山区")
    assert "东湖新技术开发区" in admin.overlay_zones(hongshan)
    any_unit = next(u for u in units["绵阳市"] if u.county)
    assert admin.overlay_zones(any_unit) == admin.overlay_zones(any_unit)  # one zone a county
    assert admin.old_town_name("东山街道") == "东山镇" and admin.town_short("砖桥镇") == "砖桥"


@pytest.mark.slow
def test_length_distribution_is_close_to_real_traffic(tmp_path):
    pytest.importorskip("transformers")
    from mgeo.training.vocab import build_char_tokenizer

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
    code = ("import sys, mgeo.training.synth as s; s.generate_pairs(20); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bundled_sample_is_current_small_and_starts_with_the_references():
    assert SAMPLE.stat().st_size < 60_000
    rows = list(csv.DictReader(SAMPLE.open(encoding="utf-8")))
    assert 250 <= len(rows) <= 350
    assert rows[:3] == synth.REFERENCE_PAIRS
    assert rows == synth.sample_pairs(), "regenerate with training/build-default-model --sample"


def test_the_development_set_is_well_formed():
    rows = devset.read_dev_set(DEV)
    assert len(rows) >= 300
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({(r["addr1"], r["addr2"]) for r in rows}) == len(rows)
    for r in rows:
        assert r["label"] in synth.LABELS, r
        assert TAG_LABEL[r["tag"][0]] == r["label"], r  # the deciding rule names the label
        assert r["addr1"] != r["addr2"] and r["why"].strip()
    labels = Counter(r["label"] for r in rows)
    assert all(labels[k] >= 60 for k in synth.LABELS), labels
    assert {r["tag"] for r in rows} >= {f"E{i}" for i in range(1, 8)} | \
        {f"P{i}" for i in range(1, 6)} | {f"N{i}" for i in range(1, 7)}


@pytest.mark.slow
def test_the_generator_copies_no_development_pair():
    dev = {frozenset((synth.normalize(r["addr1"]), synth.normalize(r["addr2"])))
           for r in devset.read_dev_set(DEV)}
    dev_sides = {s for pair in dev for s in pair}
    made = synth.generate_pairs(20_000, seed=0)
    assert not any(frozenset((synth.normalize(p["addr1"]), synth.normalize(p["addr2"]))) in dev
                   for p in made)
    copied = sum(synth.normalize(p["addr1"]) in dev_sides or synth.normalize(p["addr2"])
                 in dev_sides for p in made)
    assert copied < 20, copied  # a bare district or road may coincide, nothing more
