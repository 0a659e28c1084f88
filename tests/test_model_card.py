"""The bundled demonstration model's real-pair score, stated wherever its scores are shown.

The score was measured by the maintainers on real labelled pairs that cannot be shipped here;
training/card.py keeps it keyed by the fingerprint of the weights it was measured on. These
tests hold the card, the README's model table and the demo's summary to that one record, and
show that other weights claim none of it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mgeo.training import card  # noqa: E402
from mgeo.worker.inference.model import default_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real() -> dict:
    (found,) = card.measured_elsewhere(default_model_dir())
    return found


def test_the_bundled_weights_carry_the_ccks_score(real):
    assert real["n"] == 3000 and real["macro_f1"] == 0.42
    assert real["f1"] == {"exact_match": 0.27, "partial_match": 0.48, "not_match": 0.51}
    assert real["macro_f1"] == pytest.approx(sum(real["f1"].values()) / 3, abs=0.005)
    assert "CCKS 2021" in real["name"]


def test_a_model_in_memory_and_its_file_share_one_fingerprint():
    """The card is written from the model in memory, the demo reads the file: both must find
    the same record."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(default_model_dir())
    from_file = load_file(str(default_model_dir() / "model.safetensors"))
    assert card.weights_fingerprint(model.state_dict()) == card.weights_fingerprint(from_file)


def test_other_weights_claim_nothing(tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(default_model_dir() / "model.safetensors"))
    name = sorted(tensors)[-1]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1e-3  # one weight of one tensor
    save_file(tensors, str(tmp_path / "model.safetensors"))
    assert card.measured_elsewhere(tmp_path) == ()
    assert card.measured_elsewhere(tmp_path / "missing") == ()


def test_the_model_card_states_it_with_what_to_do(real):
    text = (default_model_dir() / "README.md").read_text(encoding="utf-8")
    labels = ["exact_match", "partial_match", "not_match"]
    assert card._elsewhere_row(real, labels) in text.splitlines()
    assert card._elsewhere_text((real,)) in text.splitlines()
    assert "No real labelled traffic was scored" not in text
    assert "`mgeo convert" in text and "`mgeo train --model" in text


def test_the_readme_model_table_states_it(real):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if "CCKS 2021" in line and "|" in line]
    assert len(rows) == 1, rows
    cells = [c.strip() for c in rows[0].strip("> ").strip("|").split("|")]
    assert cells[1:] == [f"{real['n']:,}", f"{real['macro_f1']:.2f}",
                         " / ".join(f"{real['f1'][k]:.2f}"
                                    for k in ("exact_match", "partial_match", "not_match"))]
    assert re.search(r"`mgeo convert`.*`mgeo train\b", readme.split("## How it works")[0], re.S)


def test_the_demo_summary_states_it(real, tmp_path, capsys):
    from mgeo.tools.demo import _summary

    pairs = [{"id": "a", "addr1": "x", "addr2": "y", "meta": {"label": "not_match"}}]
    _summary(pairs, {"a": {"label": "not_match", "score": 0.1}}, 1, 1.0, tmp_path / "o.csv",
             sample=True, model_dir=None)
    out = capsys.readouterr().out
    assert ("real labelled pairs (CCKS 2021, measured by the maintainers): macro-F1 0.42 "
            "(3,000 pairs; F1 exact 0.27, partial 0.48, not 0.51)") in out
    assert "`mgeo convert`" in out and "`mgeo train`" in out
    assert "not measured on real traffic" not in out
