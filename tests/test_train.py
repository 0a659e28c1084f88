"""`mgeo train`: learns, reproduces itself from a seed, saves a directory transformers loads."""

from __future__ import annotations

import json
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mgeo import synth  # noqa: E402
from mgeo.cli import main as cli_main  # noqa: E402
from mgeo.settings import TrainSettings  # noqa: E402
from worker import train as tr  # noqa: E402

TINY = dict(layers=1, hidden=64, heads=2, threads=2, plot=False)


def settings(out, **kw) -> TrainSettings:
    return TrainSettings(out=out, **{**TINY, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained briefly on generated pairs (shared by several tests)."""
    out = tmp_path_factory.mktemp("m") / "model"
    s = settings(out, synth=3000, epochs=4, batch_size=32, lr=2e-3, dropout=0.0, evals=2,
                 plot=True)
    return s, tr.train(s)


def test_short_training_beats_chance_by_far(trained):
    _, result = trained
    # Always answering the majority class scores 0.22; guessing by the label mix about 0.33.
    assert result.metrics["macro_f1"] > 0.5, result.metrics
    assert len(result.history) == 2
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] + 0.05


def test_saved_directory_loads_with_transformers_and_gives_the_same_logits(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    s, result = trained
    pairs = synth.REFERENCE_PAIRS + synth.generate_pairs(20, seed=99)

    def logits(tok, model):
        enc = tok([p["addr1"] for p in pairs], [p["addr2"] for p in pairs], truncation=True,
                  max_length=128, padding=True, return_tensors="pt")
        with torch.inference_mode():
            return model.eval()(**enc).logits

    before = logits(result.tokenizer, result.model)
    tok = AutoTokenizer.from_pretrained(s.out, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(s.out, local_files_only=True)
    assert model.dtype == torch.float32
    assert model.config.id2label == {0: "not_match", 1: "partial_match", 2: "exact_match"}
    assert model.config.label2id == {"not_match": 0, "partial_match": 1, "exact_match": 2}
    torch.testing.assert_close(logits(tok, model), before, rtol=0, atol=1e-5)


def test_saved_directory_has_card_metrics_and_curve(trained):
    s, result = trained
    names = {p.name for p in s.out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "training_metrics.json",
            "training_curve.png", "tokenizer_config.json"} <= names
    assert not any(p.name.startswith(".") for p in s.out.parent.iterdir()), "temp dirs left"
    card = (s.out / "README.md").read_text(encoding="utf-8")
    assert "NOT MGeo" in card and "same generator" in card
    assert f"{result.metrics['macro_f1']:.4f}" in card
    assert "mgeo train --synth 3000" in card
    record = json.loads((s.out / "training_metrics.json").read_text(encoding="utf-8"))
    assert record["metrics"]["macro_f1"] == result.metrics["macro_f1"]
    assert [r["expected"] for r in record["references"]] == [
        "exact_match", "not_match", "partial_match"]
    assert (s.out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_same_seed_same_metrics_other_seed_other_metrics(tmp_path):
    def run(seed, name):
        return tr.train(settings(tmp_path / name, synth=600, epochs=1, batch_size=32,
                                 evals=2, seed=seed))

    a, b, c = run(3, "a"), run(3, "b"), run(4, "c")
    assert a.metrics == b.metrics
    assert a.history == [dict(h, seconds=a.history[i]["seconds"])
                         for i, h in enumerate(b.history)]
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name
    assert [h["train_loss"] for h in a.history] != [h["train_loss"] for h in c.history]


def test_cli_trains_from_csv_and_fine_tunes_a_base(tmp_path, trained):
    data = tmp_path / "pairs.jsonl"
    synth.write_pairs(data, synth.generate_pairs(300, seed=1))
    base_settings, base_result = trained
    out = tmp_path / "tuned"
    argv = ["train", "--data", str(data), "--out", str(out), "--base", str(base_settings.out),
            "--epochs", "1", "--threads", "2", "--no-plot", "--evals", "1"]
    assert cli_main(argv) == 0
    record = json.loads((out / "training_metrics.json").read_text(encoding="utf-8"))
    assert record["lr"] == 3e-5 and record["train_pairs"] == 270
    csv_data = tmp_path / "pairs.csv"
    synth.write_pairs(csv_data, synth.generate_pairs(300, seed=1))
    assert tr.read_pairs(csv_data) == tr.read_pairs(data)


def test_usage_errors_exit_2_with_a_message(tmp_path, capsys):
    assert cli_main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "--synth" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("id,addr1,addr2,label\n1,a,b,same\n2,c,d,not_match\n", encoding="utf-8")
    assert cli_main(["train", "--data", str(bad), "--out", str(tmp_path / "y")]) == 2
    assert "same" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_bucketed_batches_cover_every_pair_once_with_similar_lengths():
    rng = random.Random(0)
    lengths = [rng.randint(10, 90) for _ in range(5000)]
    batches = tr.bucketed_batches(lengths, 32, random.Random(1))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(5000))
    spread = sorted(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    assert spread[len(spread) // 2] <= 3  # a batch pads little
    assert batches == tr.bucketed_batches(lengths, 32, random.Random(1))


def test_classification_report():
    rep = tr.classification_report([0, 0, 1, 2, 2], [0, 1, 1, 2, 0],
                                   {0: "not_match", 1: "partial_match", 2: "exact_match"})
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["per_label"]["not_match"]["precision"] == pytest.approx(0.5)
    assert rep["per_label"]["exact_match"]["recall"] == pytest.approx(0.5)
    assert rep["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)
