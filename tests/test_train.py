"""`mgeo train`: learns, reproduces itself from a seed, saves a directory transformers loads."""

from __future__ import annotations

import json
import os
import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mgeo.training import synth  # noqa: E402
from mgeo.tools.cli import main as cli_main  # noqa: E402
from mgeo.training.settings import TrainSettings  # noqa: E402
from mgeo.training import train as tr  # noqa: E402
from mgeo.training.evaluate import classification_report  # noqa: E402

# Under pytest -n these run on one process, which trains the model once (conftest.py).
pytestmark = pytest.mark.timeout(900)

# Two torch threads alone; one where pytest runs tests side by side (-n, as .ci/run's slow
# lane does): two threads that meet at every operator, on cores other processes want, spend
# their time waiting for each other (the training fixture took over 300 s so, 51 s alone).
TINY = dict(layers=1, hidden=64, heads=2, threads=1 if os.environ.get("PYTEST_XDIST_WORKER")
            else 2, plot=False)


def settings(out, **kw) -> TrainSettings:
    return TrainSettings(out=out, **{**TINY, **kw})


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model trained briefly on generated pairs (shared by several tests). Session-wide:
    under pytest -n a module fixture is set up again whenever a process's queue of tests runs
    dry in the middle of the module."""
    out = tmp_path_factory.mktemp("m") / "model"
    s = settings(out, synth=8000, epochs=3, batch_size=16, lr=1e-3, dropout=0.0, layers=2,
                 evals=2, plot=True)
    return s, tr.train(s)


def test_short_training_beats_chance_by_far(trained):
    _, result = trained
    # Always answering the majority class scores 0.21; guessing by the label mix about 0.33.
    # (A model this small and this briefly trained learns not_match and partial_match first;
    # exact_match, with the most varied rules, takes the bundled model's 500,000 pairs.)
    assert result.metrics["macro_f1"] > 0.42, result.metrics
    assert result.metrics["accuracy"] > 0.5, result.metrics
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


def test_the_worker_engine_loads_the_saved_directory_and_scores_like_the_trained_model(trained):
    from mgeo.worker.inference.engine import Engine
    from mgeo.worker.inference.model import load_model

    s, result = trained
    pairs = synth.REFERENCE_PAIRS + synth.generate_pairs(40, seed=98)
    engine = Engine(*load_model(s.out), device="cpu", token_budget=512)
    try:
        scored = engine.score([(p["addr1"], p["addr2"]) for p in pairs])
    finally:
        engine.close()
    assert engine.labels == ["not_match", "partial_match", "exact_match"]
    enc = result.tokenizer([p["addr1"] for p in pairs], [p["addr2"] for p in pairs],
                           truncation=True, max_length=128, padding=True, return_tensors="pt")
    with torch.inference_mode():
        want = torch.softmax(result.model.eval()(**enc).logits.float(), -1)
    got = torch.tensor([[sc.probs[lab] for lab in engine.labels] for sc in scored])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # What it learned survives the round trip: the engine labels every pair as the trained
    # model does, and beats guessing by the label mix (about 0.36) on fresh pairs.
    labels = [max(sc.probs, key=sc.probs.get) for sc in scored]
    assert labels == [engine.labels[i] for i in want.argmax(-1).tolist()]
    hits = sum(label == p["label"] for label, p in zip(labels, pairs))
    assert hits / len(pairs) > 0.4


@pytest.mark.slow
def test_a_fresh_model_starts_as_a_character_matcher(tmp_path):
    tok, model = tr.fresh_model(settings(tmp_path / "x"), tmp_path / "tok")  # 2 heads of 32
    half = model.config.hidden_size // 2
    emb = model.bert.embeddings
    assert not emb.word_embeddings.weight[:, half:].any()  # characters in the first half
    assert not emb.word_embeddings.weight[tok.pad_token_id].any()
    assert not emb.position_embeddings.weight[:, :half].any()  # the rest in the second
    assert not emb.token_type_embeddings.weight[:, :half].any()
    attn = model.bert.encoder.layer[0].attention.self
    diag = torch.diag(torch.tensor([1.0] * half + [0.0] * half))
    assert torch.equal(attn.query.weight, diag) and torch.equal(attn.key.weight, diag)

    enc = tok("紫萱路", "萱林街", return_tensors="pt")
    model.set_attn_implementation("eager")  # SDPA returns no attention weights
    with torch.inference_mode():
        out = model.eval()(**enc, output_attentions=True)
    ids = enc["input_ids"][0].tolist()
    pos = {c: [i for i, t in enumerate(ids) if t == tok.convert_tokens_to_ids(c)]
           for c in "紫萱路林街"}
    match, spread = out.attentions[0][0, 0], out.attentions[0][0, 1]  # [query, key]
    # The character head: 萱 attends to 萱 on the other side far more than to the others.
    xuan, other_xuan = pos["萱"]
    assert match[xuan, other_xuan] > 5 * max(match[xuan, pos[c][0]] for c in "紫路林街")
    # The other head attends uniformly: [CLS] starts with the mean over the pair.
    torch.testing.assert_close(spread[0], torch.full_like(spread[0], 1 / len(ids)))


def test_saved_directory_has_card_metrics_and_curve(trained):
    s, result = trained
    names = {p.name for p in s.out.iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "training_metrics.json",
            "training_curve.png", "tokenizer_config.json"} <= names
    assert not any(p.name.startswith(".") for p in s.out.parent.iterdir()), "temp dirs left"
    card = (s.out / "README.md").read_text(encoding="utf-8")
    assert "NOT MGeo" in card and "same generator" in card
    assert f"{result.metrics['macro_f1']:.4f}" in card
    # The hand-written development set is scored and reported beside the synthetic score.
    dev = result.dev
    assert dev is not None and dev["metrics"]["n"] >= 300
    assert "## Hand-written development set" in card and "Confusion matrix" in card
    assert f"{dev['metrics']['macro_f1']:.4f}" in card
    for name, v in dev["metrics"]["per_label"].items():
        assert f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} |" in card
    assert sum(sum(row.values()) for row in dev["confusion"].values()) == dev["metrics"]["n"]
    assert set(dev["by_tag"]) >= {"E1", "E7", "P1", "P5", "N1", "N6"}
    record = json.loads((s.out / "training_metrics.json").read_text(encoding="utf-8"))
    assert record["dev"]["metrics"] == dev["metrics"]
    assert record["dev"]["confusion"] == dev["confusion"]
    assert record["command"].startswith("mgeo train ") and "--synth 8000" in record["command"]
    assert record["command"] in card
    assert record["metrics"]["macro_f1"] == result.metrics["macro_f1"]
    assert [r["expected"] for r in record["references"]] == [
        "exact_match", "not_match", "partial_match"]
    assert (s.out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
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


def test_cli_trains_from_csv_and_fine_tunes_the_model_it_is_given(tmp_path, trained, capsys):
    data = tmp_path / "pairs.jsonl"
    synth.write_pairs(data, synth.generate_pairs(300, seed=1))
    base_settings, base_result = trained
    out = tmp_path / "tuned"
    argv = ["train", "--data", str(data), "--out", str(out), "--model", str(base_settings.out),
            "--epochs", "1", "--threads", "2", "--no-plot", "--evals", "1"]
    assert cli_main(argv) == 0
    record = json.loads((out / "training_metrics.json").read_text(encoding="utf-8"))
    assert record["lr"] == 3e-5 and record["train_pairs"] == 270
    assert record["start"] == str(base_settings.out)
    assert f"Fine-tuned from `{base_settings.out}`" in (out / "README.md").read_text("utf-8")
    assert "deprecated" not in capsys.readouterr().err
    # --base still works, as a deprecated alias of --model, and says so once.
    old = tmp_path / "tuned-old-flag"
    assert cli_main([*argv[:4], str(old), "--base", str(base_settings.out), *argv[7:]]) == 0
    assert json.loads((old / "training_metrics.json").read_text("utf-8"))["start"] == \
        str(base_settings.out)
    assert capsys.readouterr().err.count("--base is deprecated") == 1
    # Two different starting checkpoints are a usage error.
    assert cli_main([*argv, "--base", str(tmp_path)]) == 2
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


def _model_inputs(batches: list) -> list[tuple]:
    """(ids, token types, attention mask as [pairs, width] bool) of each batch a model saw."""
    out = []
    for ids, types, mask in batches:
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        out.append((ids, types, mask.reshape(ids.shape[0], -1).bool()))
    return out


def test_evaluation_feeds_the_model_exactly_what_the_engine_feeds_it(tiny_model):
    """The held-out split, the development set and the reference pairs are scored on the
    serving path: the same batches of the same token ids, types and masks as the worker's
    engine (padded layout, its CPU budget) gives the model, not the transformers call's."""
    from mgeo.training import devset
    from mgeo.training.evaluate import score_dev_set, score_references
    from mgeo.worker.inference.engine import Engine
    from mgeo.worker.inference.model import load_model

    tokenizer, model, id2label = load_model(tiny_model)
    label2id = {v: k for k, v in id2label.items()}
    seen: list = []

    def record(module, args, kwargs):
        seen.append((kwargs["input_ids"], kwargs["token_type_ids"], kwargs["attention_mask"]))

    hook = model.register_forward_pre_hook(record, with_kwargs=True)
    score_dev_set(model, tokenizer, label2id, id2label, 128)
    score_references(model, tokenizer, id2label, 128)
    hook.remove()
    evaluated = _model_inputs(seen)

    fed: list = []

    def feed(real):
        def call(inputs):
            fed.append((inputs.ids, inputs.types, inputs.mask))
            return real(inputs)
        return call

    rows = devset.read_dev_set(devset.dev_set_path())
    engine = Engine(tokenizer, model, id2label, device="cpu", batch_layout="padded", lanes=1,
                    model_call=feed)
    try:
        engine.score_rows([(r["addr1"], r["addr2"]) for r in rows])
        engine.score_rows([(p["addr1"], p["addr2"]) for p in synth.REFERENCE_PAIRS])
    finally:
        engine.close()
    served = _model_inputs(fed)
    assert len(evaluated) == len(served) > 2
    for (a, b, c), (x, y, z) in zip(evaluated, served):
        assert torch.equal(a, x) and torch.equal(b, y) and torch.equal(c, z)


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
    rep = classification_report([0, 0, 1, 2, 2], [0, 1, 1, 2, 0],
                                   {0: "not_match", 1: "partial_match", 2: "exact_match"})
    assert rep["accuracy"] == pytest.approx(0.6)
    assert rep["per_label"]["not_match"]["precision"] == pytest.approx(0.5)
    assert rep["per_label"]["exact_match"]["recall"] == pytest.approx(0.5)
    assert rep["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_bundled_default_model_is_the_trained_demonstration_model():
    from mgeo.worker.inference.engine import Engine
    from mgeo.worker.inference.model import default_model_dir, load_model

    path = default_model_dir()
    allowed = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
               "vocab.txt", "special_tokens_map.json", "README.md", "training_metrics.json",
               "training_curve.png"}
    names = {p.name for p in path.iterdir()}
    assert names <= allowed, names - allowed
    assert (path / "model.safetensors").stat().st_size <= 40 * 10**6  # the budget
    card = (path / "README.md").read_text(encoding="utf-8")
    assert "NOT MGeo" in card and "synthetic" in card
    assert "training/build-default-model" in card
    record = json.loads((path / "training_metrics.json").read_text(encoding="utf-8"))
    assert record["metrics"]["macro_f1"] >= 0.90
    assert f"{record['metrics']['macro_f1']:.4f}" in card
    assert record["command"] in card
    # Scored on the hand-written development set too, with the same numbers in the card.
    dev = record["dev"]["metrics"]
    assert dev["n"] >= 300 and f"{dev['macro_f1']:.4f}" in card
    assert "## Hand-written development set" in card and "Confusion matrix" in card

    engine = Engine(*load_model(path), device="cpu")
    try:
        same, other, partial = engine.score(
            [(p["addr1"], p["addr2"]) for p in synth.REFERENCE_PAIRS])
    finally:
        engine.close()
    # The same office written two ways scores high, an unrelated hospital low.
    assert same.probs["exact_match"] > 0.5 > other.probs["exact_match"]
    assert max(other.probs, key=other.probs.get) == "not_match"
    assert partial.probs["exact_match"] < same.probs["exact_match"]


def test_a_failed_training_leaves_the_previous_model_in_place(tmp_path, monkeypatch):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous")

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tr, "_save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        tr.train(settings(out, synth=100, epochs=1, evals=1))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left
    assert (out / "model.safetensors").read_bytes() == b"previous"
