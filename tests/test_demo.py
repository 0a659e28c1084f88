"""`mgeo demo`, the README's first command, end to end: one result row per sample pair, scored
by the bundled demonstration model so that the scores mean something."""

import csv
import json
import subprocess
import sys

import pytest

from mgeo.demo import sample_path
from mgeo.pairs_io import read_rows

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_demo_writes_one_row_per_sample_pair_with_sensible_scores(tmp_path):
    out = tmp_path / "demo.csv"
    proc = subprocess.run([sys.executable, "-m", "mgeo.cli", "demo", "--out", str(out),
                           "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sample = [r.obj for r in read_rows(sample_path())]
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["id"] for r in rows] == [p["id"] for p in sample]  # every pair once, in order
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert f"results collected  {len(sample)}" in proc.stdout
    assert str(out) in proc.stdout

    # The bundled model, not the random fallback, scored them: the reference pairs read right.
    assert {r["model"] for r in rows} == {"default_model"}
    by_id = {r["id"]: r for r in rows}
    same, other, partial = by_id["ref-1"], by_id["ref-2"], by_id["ref-3"]
    assert float(same["score"]) > 0.5 > float(other["score"]), (same, other)
    assert other["label"] == "not_match"
    assert float(partial["score"]) < float(same["score"])
    # The rest of the sample comes from the generator the model learned (not its training
    # pairs): most labels agree with the sample's label column.
    agree = sum(r["label"] == json.loads(r["meta"])["label"] for r in rows) / len(rows)
    assert agree > 0.8, agree
    assert "label agreement" in proc.stdout
    examples = proc.stdout.split("examples", 1)[1]
    for ref in sample[:3]:  # the three MGeo reference pairs are among the examples shown
        assert ref["addr2"] in examples
