"""`mgeo demo`, the README's first command, end to end: one result row per sample pair."""

import csv
import subprocess
import sys

import pytest

from conftest import ROOT
from mgeo.demo import sample_path
from mgeo.pairs_io import read_rows

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_demo_writes_one_row_per_sample_pair(tmp_path):
    out = tmp_path / "demo.csv"
    proc = subprocess.run([sys.executable, "-m", "mgeo.cli", "demo", "--out", str(out),
                           "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ids = [r.obj["id"] for r in read_rows(sample_path())]
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["id"] for r in rows] == ids  # every pair once, in input order
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert f"results collected  {len(ids)}" in proc.stdout
    assert str(out) in proc.stdout
