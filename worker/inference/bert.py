"""A BERT sequence classifier in plain torch, loaded without importing `transformers`.

Importing `transformers` and building its model costs a worker ~5 CPU-seconds at every start
(torch's dynamo, distributed tensors and sympy come with it), as much again as torch itself:
a pod that scales out, a process that restarts after a crash, and every command that scores
pay it. MGeo is a plain BERT (absolute positions, GELU, a pooler and a linear head), so the
serving path reads it directly: the weights from `model.safetensors` (safetensors), the
tokenizer from `tokenizer.json` (tokenizers, the Rust library `transformers` itself wraps).

The modules carry the names of `transformers`' `BertForSequenceClassification`
(`bert.encoder.layer.N.attention.self.query`, ...), so its checkpoints load key for key, and
`PackedBert` and int8 quantization see the same layers. A directory this does not cover (another
architecture or activation, weights only in `pytorch_model.bin` or sharded, no
`tokenizer.json`, weights under other names) loads through `transformers` as before
(`model.load_serving`). `tests/test_bert.py` holds the scores to those of `transformers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

# `hidden_act` values of BERT configs and the function each names in `transformers`.
ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class BertShape:
    """The fields of a BERT config.json the model needs (the rest are ignored)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    hidden_act: str
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    num_labels: int
    id2label: dict[int, str] = field(default_factory=dict)
    # What `PackedBert` and `resolve_layout` ask every BERT (fixed for this one).
    position_embedding_type: str = "absolute"
    is_decoder: bool = False

    @classmethod
    def of(cls, config: dict) -> "BertShape | str":
        """The shape of a config.json, or why this module cannot run it."""
        if config.get("model_type") != "bert":
            return f"model_type {config.get('model_type')!r} is not bert"
        archs = config.get("architectures") or ["BertForSequenceClassification"]
        if archs != ["BertForSequenceClassification"]:
            return f"architectures {archs} is not BertForSequenceClassification"
        act = config.get("hidden_act", "gelu")
        if not isinstance(act, str) or act not in ACTIVATIONS:
            return f"hidden_act {act!r} is not one of {', '.join(ACTIVATIONS)}"
        if config.get("position_embedding_type", "absolute") != "absolute":
            return f"position_embedding_type {config['position_embedding_type']!r}"
        if config.get("is_decoder") or config.get("add_cross_attention"):
            return "a decoder"
        raw = config.get("id2label") or {}
        try:
            id2label = {int(k): str(v) for k, v in raw.items()}
            hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
            shape = cls(
                vocab_size=int(config["vocab_size"]), hidden_size=hidden,
                num_hidden_layers=int(config["num_hidden_layers"]), num_attention_heads=heads,
                intermediate_size=int(config["intermediate_size"]), hidden_act=act,
                max_position_embeddings=int(config.get("max_position_embeddings", 512)),
                type_vocab_size=int(config.get("type_vocab_size", 2)),
                layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
                num_labels=int(config.get("num_labels") or len(id2label) or 2),
                id2label=id2label)
        except (KeyError, TypeError, ValueError) as exc:
            return f"config.json lacks or mistypes a BERT field ({exc})"
        if heads <= 0 or hidden % heads:
            return f"hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
        if not shape.id2label:
            shape = replace(shape, id2label={i: f"LABEL_{i}" for i in range(shape.num_labels)})
        return shape


class _Embeddings(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _SelfAttention(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.all_head_size = c.hidden_size
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)


class _Residual(nn.Module):
    """A projection added to the residual stream, then normalized (`attention.output` and
    `output` of a layer)."""

    def __init__(self, inner: int, c: BertShape):
        super().__init__()
        self.dense = nn.Linear(inner, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)


class _Attention(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.self = _SelfAttention(c)
        self.output = _Residual(c.hidden_size, c)


class _Intermediate(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.intermediate_size)
        self.intermediate_act_fn = ACTIVATIONS[c.hidden_act]


class _Layer(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.attention = _Attention(c)
        self.intermediate = _Intermediate(c)
        self.output = _Residual(c.intermediate_size, c)


class _Encoder(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.hidden_size)
        self.activation = nn.Tanh()


class _Bert(nn.Module):
    def __init__(self, c: BertShape):
        super().__init__()
        self.embeddings = _Embeddings(c)
        self.encoder = _Encoder(c)
        self.pooler = _Pooler(c)


class Output(NamedTuple):
    logits: torch.Tensor


class BertClassifier(nn.Module):
    """BERT with a pooler and a linear head over its [CLS] token, on padded batches; packed
    batches run through `PackedBert` on the same modules."""

    def __init__(self, config: BertShape):
        super().__init__()
        self.config = config
        self.bert = _Bert(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None) -> Output:
        """Logits [pairs, labels] of a padded batch. The mask is [pairs, width] (1 where a
        token is real), or already as attention takes it ([pairs, 1, 1, width] bool); None
        when every token is real."""
        c, e = self.config, self.bert.embeddings
        pairs, width = input_ids.shape
        heads = c.num_attention_heads
        positions = torch.arange(width, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = e.word_embeddings(input_ids) + e.token_type_embeddings(token_type_ids)
        x = e.LayerNorm(x + e.position_embeddings(positions)[None])
        mask = attention_mask
        if mask is not None and mask.dim() == 2:
            mask = mask[:, None, None, :].bool()
        for layer in self.bert.encoder.layer:
            att = layer.attention.self
            q, k, v = (p(x).view(pairs, width, heads, -1).transpose(1, 2)
                       for p in (att.query, att.key, att.value))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            ctx = ctx.transpose(1, 2).reshape(pairs, width, att.all_head_size)
            out = layer.attention.output
            x = out.LayerNorm(out.dense(ctx) + x)
            inter, out = layer.intermediate, layer.output
            x = out.LayerNorm(out.dense(inter.intermediate_act_fn(inter.dense(x))) + x)
        pooler = self.bert.pooler
        return Output(self.classifier(pooler.activation(pooler.dense(x[:, 0]))))


# Buffers some checkpoints carry that this model computes instead.
_IGNORED = ("bert.embeddings.position_ids",)


def load_bert(path: Path) -> BertClassifier | str:
    """The classifier in directory `path` (one `model.safetensors`), on the CPU in its saved
    dtype, or why this module cannot load it (the caller falls back to `transformers`)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"cannot read config.json ({exc})"
    shape = BertShape.of(config) if isinstance(config, dict) else "config.json is not an object"
    if isinstance(shape, str):
        return shape
    weights = path / "model.safetensors"
    if not weights.is_file():
        return "no single model.safetensors"
    from safetensors.torch import load_file

    try:
        state = {k: v for k, v in load_file(weights).items() if k not in _IGNORED}
    except Exception as exc:  # noqa: BLE001 (safetensors' own error class; transformers,
        return f"cannot read model.safetensors ({exc})"  # tried next, explains it to the user
    # Built on the CPU and then given the saved tensors: the meta device would spare the
    # random initialisation (~1 CPU-s for BERT-base) but imports torch's compiler (~2 CPU-s).
    model = BertClassifier(shape)
    wanted = set(model.state_dict())
    if set(state) != wanted:
        missing, extra = sorted(wanted - set(state)), sorted(set(state) - wanted)
        return (f"its weights are not named as a BertForSequenceClassification's "
                f"(missing {missing[:2]}, unexpected {extra[:2]})")
    if any(state[k].shape != v.shape for k, v in model.state_dict().items()):
        return "its weights' shapes do not match config.json"
    model.load_state_dict(state, assign=True)
    return model.eval()


class RustTokenizer:
    """A directory's fast tokenizer without `transformers`: the pipeline of its
    tokenizer.json, and the special tokens its tokenizer_config.json names (BERT's by
    default). Offers what `PairEncoder` and the engine ask of a tokenizer."""

    is_fast = True

    def __init__(self, backend, specials: dict[str, str]):
        self.backend_tokenizer = backend
        for name, token in specials.items():
            setattr(self, f"{name}_token_id", backend.token_to_id(token))

    @classmethod
    def load(cls, path: Path) -> "RustTokenizer | str":
        """The tokenizer of directory `path`, or why it cannot be read so."""
        if not (path / "tokenizer.json").is_file():
            return "no tokenizer.json"
        from tokenizers import Tokenizer

        try:
            backend = Tokenizer.from_file(str(path / "tokenizer.json"))
            config_file = path / "tokenizer_config.json"
            config = json.loads(config_file.read_text(encoding="utf-8")) \
                if config_file.is_file() else {}
        except Exception as exc:  # noqa: BLE001 (tokenizers raises a plain Exception)
            return f"cannot read its tokenizer ({exc})"
        specials = {}
        for name in ("cls", "sep", "pad", "unk"):
            token = config.get(f"{name}_token", f"[{name.upper()}]")
            specials[name] = token.get("content") if isinstance(token, dict) else token
        return cls(backend, specials)
