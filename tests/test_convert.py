"""`mgeo convert`: a synthetic checkpoint in ModelScope's layout converts to an equal HF model."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("transformers")
from transformers import BertConfig, BertModel  # noqa: E402
from transformers.models.bert.modeling_bert import BertAttention  # noqa: E402

from mgeo.tools.cli import main  # noqa: E402
from mgeo.worker.inference.convert import convert  # noqa: E402
from mgeo.worker.inference.model import load_model, load_serving  # noqa: E402
from mgeo.training.vocab import build_char_tokenizer  # noqa: E402

LABELS = ["not_match", "exact_match", "partial_match"]  # deliberately not the usual order
LAYERS, FUSION, HIDDEN, HEADS = 3, 2, 32, 2


class FakeMGeoBackbone(nn.Module):
    """Parameter names as ModelScope's MGeo: a text encoder plus GIS modules."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.text_encoder = BertModel(config, add_pooling_layer=True)
        for layer in self.text_encoder.encoder.layer[FUSION:]:
            layer.crossattention = BertAttention(config)  # fusion layers carry cross-attention
        gis = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)
        self.gis_encoder = BertModel(gis, add_pooling_layer=False)
        self.gis2text = nn.Linear(16, config.hidden_size)
        self.gis_type = nn.Embedding(1, 16)
        # ModelScope's embeddings keep position_ids as a persistent buffer.
        self.register_buffer("pos_ids_holder", torch.zeros(1))


class FakeMGeoForSequenceClassification(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.bert = FakeMGeoBackbone(config)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def text_logits(self, input_ids, token_type_ids, attention_mask):
        """ModelScope's text-only forward, written out: layers < fusion_layer, additive mask."""
        enc = self.bert.text_encoder
        h = enc.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        n, length, _ = h.shape
        head = HIDDEN // HEADS
        for layer in enc.encoder.layer[:FUSION]:
            att = layer.attention

            def split(x):
                return x.view(n, length, HEADS, head).transpose(1, 2)

            q, k, v = (split(m(h)) for m in (att.self.query, att.self.key, att.self.value))
            w = (q @ k.transpose(-1, -2) / math.sqrt(head) + mask).softmax(-1)
            ctx = (w @ v).transpose(1, 2).reshape(n, length, HIDDEN)
            a = att.output.LayerNorm(att.output.dense(ctx) + h)
            inter = F.gelu(layer.intermediate.dense(a))
            h = layer.output.LayerNorm(layer.output.dense(inter) + a)
        pooled = torch.tanh(enc.pooler.dense(h[:, 0]))
        return self.classifier(pooled)


def _modelscope_checkpoint(root, *, labels_in_config=True):
    tok = build_char_tokenizer(root / "tokdir")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=64,
                     max_position_embeddings=128, num_labels=len(LABELS))
    torch.manual_seed(0)
    model = FakeMGeoForSequenceClassification(cfg).eval()
    state = model.state_dict()
    state.pop("bert.pos_ids_holder")
    state["bert.text_encoder.embeddings.position_ids"] = torch.arange(128)[None]
    assert any(".crossattention." in k for k in state)
    src = root / "modelscope"
    src.mkdir()
    torch.save(state, src / "pytorch_model.bin")
    raw = cfg.to_dict()
    raw.update(fusion_layer=FUSION, gis_embedding=0, gis_encoder={"hidden_size": 16},
               rel_type_vocab_size=8, architectures=["MGeoForSequenceClassification"])
    raw.pop("id2label")
    raw.pop("label2id")
    if labels_in_config:
        raw["id2label"] = {str(i): lab for i, lab in enumerate(LABELS)}
    (src / "config.json").write_text(json.dumps(raw))
    (src / "configuration.json").write_text(json.dumps(
        {"framework": "pytorch", "task": "sentence-similarity", "model": {"type": "mgeo"}}))
    (src / "vocab.txt").write_text((root / "tokdir" / "vocab.txt").read_text("utf-8"), "utf-8")
    return src, model


def test_converted_model_equals_the_modelscope_text_path(tmp_path):
    src, original = _modelscope_checkpoint(tmp_path)
    dst = tmp_path / "hf"
    convert(src, dst)

    tokenizer, model, id2label = load_model(dst)
    assert id2label == dict(enumerate(LABELS))
    assert model.config.num_hidden_layers == FUSION
    assert (dst / "model.safetensors").is_file()
    assert not (dst / "pytorch_model.bin").exists()

    enc = tokenizer(["紫萱路363号人力社保局", "栖霞区仙林街道文枢东路2号商住楼4楼"],
                    ["紫萱路363号市人社局", "栖霞区文枢东路2号书店"],
                    padding=True, truncation=True, max_length=128, return_tensors="pt")
    assert enc["attention_mask"].min() == 0  # the padding path is exercised
    with torch.inference_mode():
        want = original.text_logits(enc["input_ids"], enc["token_type_ids"],
                                    enc["attention_mask"])
        got = model(**enc).logits
        # What the worker serves it with: its own BERT, read without transformers.
        _, served, _ = load_serving(dst)
        assert type(served).__name__ == "BertClassifier"
        served_logits = served(enc["input_ids"], enc["token_type_ids"],
                               enc["attention_mask"]).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(served_logits, want, atol=1e-5, rtol=0)


def test_labels_absent_use_option_or_documented_default(tmp_path, caplog):
    src, _ = _modelscope_checkpoint(tmp_path, labels_in_config=False)
    convert(src, tmp_path / "given", labels=["a", "b", "c"])
    assert load_model(tmp_path / "given")[2] == {0: "a", 1: "b", 2: "c"}
    with caplog.at_level("WARNING"):
        convert(src, tmp_path / "default")
    assert load_model(tmp_path / "default")[2] == {0: "not_match", 1: "partial_match",
                                                   2: "exact_match"}
    assert "names no labels" in caplog.text


def test_refuses_non_empty_destination_and_non_checkpoints(tmp_path, capsys):
    src, _ = _modelscope_checkpoint(tmp_path)
    dst = tmp_path / "busy"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    assert main(["convert", str(src), str(dst)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (dst / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="no config.json"):
        convert(tmp_path / "tokdir", tmp_path / "x")


def test_modelscope_directory_is_explained_by_the_loader(tmp_path):
    src, _ = _modelscope_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="mgeo convert"):
        load_model(src)
