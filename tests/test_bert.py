"""The serving path's own BERT (`worker/inference/bert.py`): the scores and token ids of
`transformers`, without importing it, and `transformers` for what it does not cover."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engines import random_pairs

torch = pytest.importorskip("torch")

from mgeo.tools.models import build_random_model  # noqa: E402
from mgeo.worker.inference.bert import BertClassifier, BertShape, RustTokenizer  # noqa: E402
from mgeo.worker.inference.engine import Engine  # noqa: E402
from mgeo.worker.inference.model import default_model_dir, load_model, load_serving  # noqa: E402
from mgeo.worker.inference.packed import Packed, PackedBert  # noqa: E402
from mgeo.worker.inference.tokenize import PairEncoder  # noqa: E402

# Latin words, digits, full-width forms, accents, emoji and a control character beside Chinese:
# the cases where a tokenizer's normalizer and pre-tokenizer decide.
ODD = [("北京市朝阳区ＡＢＣ大厦Room 1203号", "朝阳区abc大厦1203室"),
       ("Café No.5 上海市徐汇区", "上海徐汇区café5号"), ("深圳市南山区🏠科技园\t8栋", "")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("tiny-bert"), layers=2, hidden=64,
                              heads=2, intermediate=128, seed=3)


@pytest.fixture(scope="module", params=["bundled", "tiny"])
def model_dir(request, tiny):
    return default_model_dir() if request.param == "bundled" else tiny


def test_a_plain_bert_is_served_without_importing_transformers(model_dir):
    """In a process of its own: the test session has imported transformers already."""
    code = ("import sys; from mgeo.worker.inference.model import load_serving\n"
            "from mgeo.worker.inference.engine import Engine\n"
            f"t, m, l = load_serving({str(model_dir)!r}, mgeo=True)\n"
            "e = Engine(t, m, l, device='cpu')\n"
            "s = e.score([('浙江省杭州市西湖区文三路90号', '杭州文三路90号')])[0]\n"
            "print(type(m).__name__, e.layout, round(sum(s.probs.values()), 4),"
            " 'transformers' in sys.modules, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    # Neither transformers nor torch's compiler (~5 and ~2 CPU-seconds of a start) is imported.
    assert out.stdout.split() == ["BertClassifier", "packed", "1.0", "False", "False"]


def test_scores_equal_transformers_padded_and_packed(model_dir):
    tokenizer, native, labels = load_serving(model_dir)
    _, hf, hf_labels = load_model(model_dir)
    assert isinstance(native, BertClassifier) and labels == hf_labels
    pairs = random_pairs(40, seed=5) + ODD
    encoder = PairEncoder(tokenizer, 128)
    enc = encoder.encode(pairs)
    lengths = enc.lengths
    order = lengths.argsort(kind="stable")[::-1].copy()  # longest first, as the engine packs
    ids, types, mask = (torch.from_numpy(a) for a in encoder.pad(
        enc, torch.arange(len(pairs)).numpy(), int(lengths.max())))
    with torch.inference_mode():
        want = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        got = native(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
        packed = PackedBert(native)(Packed.build(*encoder.pack(enc, order), lengths[order]))
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.allclose(packed, want[torch.from_numpy(order)], atol=1e-5)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_the_engine_on_its_own_bert_scores_as_on_transformers(model_dir, layout):
    pairs = random_pairs(50, seed=7) + ODD  # of 3 to 40 characters: padded batches pad
    got, want = (Engine(*load(model_dir), device="cpu", batch_layout=layout, token_budget=512)
                 .score(pairs) for load in (load_serving, load_model))
    for g, w in zip(got, want):
        assert all(abs(g.probs[k] - w.probs[k]) < 1e-5 for k in w.probs), (g, w)


def test_token_ids_equal_those_of_the_transformers_tokenizer(model_dir):
    rust, hf = RustTokenizer.load(model_dir), load_model(model_dir)[0]
    for name in ("cls", "sep", "pad", "unk"):
        assert getattr(rust, f"{name}_token_id") == getattr(hf, f"{name}_token_id")
    pairs = random_pairs(200, seed=9) + ODD
    ours, theirs = PairEncoder(rust, 64), PairEncoder(hf, 64)
    mine, want = ours.encode(pairs), theirs.encode(pairs)
    rows = torch.arange(len(pairs)).numpy()
    width = int(mine.lengths.max())
    for a, b in zip(ours.pad(mine, rows, width), theirs.pad(want, rows, width)):
        assert (a == b).all()
    call = hf([a for a, _ in pairs], [b for _, b in pairs], truncation=True, max_length=64)
    assert mine.lengths.tolist() == [len(x) for x in call["input_ids"]]


def _copy(src, dst, **config_changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({**config, **config_changes}))
    return dst


def test_other_directories_load_through_transformers_and_still_score(tiny, tmp_path, caplog):
    hf_model = load_model(tiny)[1]
    silu = _copy(tiny, tmp_path / "silu", hidden_act="silu")
    no_json = _copy(tiny, tmp_path / "no-tokenizer-json")
    (no_json / "tokenizer.json").unlink()
    as_bin = _copy(tiny, tmp_path / "bin")
    (as_bin / "model.safetensors").unlink()
    torch.save(hf_model.state_dict(), as_bin / "pytorch_model.bin")
    reasons = {silu: "hidden_act 'silu'", no_json: "no tokenizer.json",
               as_bin: "no single model.safetensors"}
    pairs = random_pairs(8, seed=2)
    want = Engine(*load_serving(tiny), device="cpu").score(pairs)
    for path, reason in reasons.items():
        caplog.clear()
        with caplog.at_level("INFO", logger="mgeo.worker.inference.model"):
            tokenizer, model, labels = load_serving(path)
        assert type(model) is type(hf_model)
        assert reason in caplog.text
        got = Engine(tokenizer, model, labels, device="cpu").score(pairs)
        if path is not silu:  # the same weights and activation: the same scores
            for g, w in zip(got, want):
                assert all(abs(g.probs[k] - w.probs[k]) < 1e-5 for k in w.probs)


@pytest.mark.parametrize("change, reason", [
    ({"model_type": "roberta"}, "model_type 'roberta' is not bert"),
    ({"architectures": ["BertForMaskedLM"]}, "is not BertForSequenceClassification"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type 'relative_key'"),
    ({"num_attention_heads": 5}, "not a multiple of num_attention_heads 5"),
    ({"num_attention_heads": 0}, "not a multiple of num_attention_heads 0"),
    ({"hidden_size": "wide"}, "lacks or mistypes a BERT field"),
])
def test_what_the_own_bert_does_not_cover_is_named(change, reason):
    config = json.loads((default_model_dir() / "config.json").read_text())
    assert isinstance(BertShape.of(config), BertShape)
    got = BertShape.of({**config, **change})
    assert isinstance(got, str) and reason in got


@pytest.mark.slow
def test_the_comparison_script_runs(tiny):
    """bench/own_bert.py, whose figures bench/RESULTS.md quotes, on the tiny model."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "bench" / "own_bert.py"), str(tiny), "60"],
                         capture_output=True, text=True, timeout=240, cwd=root)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "load, transformers", "load, own", "padded", "packed"]
    assert all("transformers" in line and "own" in line for line in lines[2:])


def test_damaged_weights_are_explained_by_the_transformers_path(tiny, tmp_path):
    broken = _copy(tiny, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(ValueError, match="cannot load a sequence-classification model"):
        load_serving(broken)
