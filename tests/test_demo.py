"""`mgeo demo`, the README's first command, end to end: one result row per sample pair, scored
by the bundled demonstration model so that the scores mean something."""

import csv
import json

import pytest

from mgeo.tools.demo import _summary, model_record, sample_path
from mgeo.readers import read_rows
from worker_only import mgeo as worker_only


@pytest.mark.broker
@pytest.mark.slow
def test_demo_writes_one_row_per_sample_pair_with_sensible_scores(tmp_path):
    # On a worker-only install (no pair generator, no matplotlib), as the worker image holds,
    # and without --out: the README names the file it writes.
    out = tmp_path / "mgeo-demo-results.csv"
    proc = worker_only("demo", "--device", "cpu", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_text(encoding="utf-8").count("\n") > 100
    sample = [r.obj for r in read_rows(sample_path())]
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["id"] for r in rows] == [p["id"] for p in sample]  # every pair once, in order
    assert all(0.0 <= float(r["score"]) <= 1.0 for r in rows)
    assert f"results collected  {len(sample)}" in proc.stdout
    assert str(out.resolve()) in proc.stdout

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
    # The summary says plainly that the sample is synthetic, and what the model scores on
    # held-out synthetic pairs and on the hand-written realistic development set.
    assert "SYNTHETIC" in proc.stdout and "not real traffic" in proc.stdout
    record = model_record(None)
    assert f"held-out synthetic pairs: macro-F1 {record['metrics']['macro_f1']:.3f}" in proc.stdout
    assert (f"hand-written realistic pairs ({record['dev']['path']}): macro-F1 "
            f"{record['dev']['metrics']['macro_f1']:.3f}") in proc.stdout
    examples = proc.stdout.split("examples", 1)[1]
    for ref in sample[:3]:  # the three MGeo reference pairs are among the examples shown
        assert ref["addr2"] in examples


def test_summary_says_the_sample_is_synthetic_and_what_the_model_scores(tmp_path, capsys):
    """Without a broker: the summary lines from a model's training_metrics.json."""
    per = {k: {"f1": f, "precision": f, "recall": f, "support": 1}
           for k, f in (("not_match", 0.81), ("partial_match", 0.72), ("exact_match", 0.63))}
    record = {"source": "`mgeo synth` (1000 pairs, seed 0)",
              "metrics": {"macro_f1": 0.9412, "n": 100, "per_label": per},
              "dev": {"path": "training/data/dev_pairs.csv",
                      "metrics": {"macro_f1": 0.7123, "n": 400, "per_label": per}}}
    (tmp_path / "training_metrics.json").write_text(json.dumps(record), encoding="utf-8")
    pairs = [{"id": "a", "addr1": "x", "addr2": "y", "meta": {"label": "not_match"}}]
    results = {"a": {"label": "not_match", "score": 0.1}}
    _summary(pairs, results, 1, 1.0, tmp_path / "out.csv", sample=True, model_dir=tmp_path)
    out = capsys.readouterr().out
    assert "SYNTHETIC" in out and "not real traffic" in out
    assert "held-out synthetic pairs: macro-F1 0.941 (100 pairs)" in out
    assert ("hand-written realistic pairs (training/data/dev_pairs.csv): macro-F1 0.712 "
            "(400 pairs; F1 exact 0.63, partial 0.72, not 0.81)") in out
    assert "trained on synthetic pairs only" in out
    # A user's own file is not called synthetic.
    _summary(pairs, results, 1, 1.0, tmp_path / "out.csv", sample=False, model_dir=tmp_path)
    assert "SYNTHETIC" not in capsys.readouterr().out
