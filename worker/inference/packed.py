"""BERT run on packed tokens: the pairs of a batch laid end to end, no padding.

A padded batch computes `pairs x longest pair` tokens; the pairs that arrive together under a
steady stream are of all lengths, so a third or more of that is padding. Every layer of a BERT
but attention works token by token (embeddings, the projections, the feed-forward network,
layer norms), so here those run on the `[tokens, hidden]` matrix of real tokens only, and only
attention, which mixes the tokens of one pair, sees a padded layout: the pairs (sorted by
length, as the engine hands them) are cut into groups of similar lengths and each group is
padded to its own longest pair (`plan_groups`). text-embeddings-inference runs BERT the same
way on GPUs, with variable-length attention kernels.

The weights are those of the loaded BERT classifier (`bert.py`'s or `transformers`'
`BertForSequenceClassification`, whose module names it shares; its modules are called, so
int8-quantized linear layers work too); the query, key and value projections are fused into one
matrix product where they are plain linear layers. Scores equal the `transformers` call to
float rounding; `tests/test_engine.py` holds them to it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

# The cost of one more attention group, in units of (padded length)^2 of one pair: the fixed
# cost of its three extra operators a layer (scatter, attention, gather) on a CPU, about as much
# as the attention of 4 pairs of 32 tokens. Measured with the bundled model on the CI machine;
# the split it gives is not sensitive to it within a factor of two.
GROUP_COST = 4096


def plan_groups(lengths: np.ndarray, group_cost: float = GROUP_COST) -> list[tuple[int, int]]:
    """Cut pairs sorted longest first into runs `[start, end)` that minimise the attention
    work: each run costs `group_cost` plus `pairs x longest^2` (exact, by dynamic programming
    over the distinct lengths)."""
    n = len(lengths)
    if n == 0:
        return []
    if np.any(lengths[1:] > lengths[:-1]):
        raise ValueError("plan_groups needs lengths sorted longest first")
    # Runs of equal length are never worth cutting: work on the distinct lengths.
    cut = np.flatnonzero(np.diff(lengths)) + 1
    starts = np.concatenate(([0], cut))
    ends = np.concatenate((cut, [n]))
    width = lengths[starts].astype(np.float64) ** 2
    m = len(starts)
    best = np.zeros(m + 1)      # best[b]: cheapest split of the first b distinct lengths
    back = np.zeros(m + 1, dtype=np.int64)
    for b in range(1, m + 1):
        # A last run made of distinct lengths a..b-1 is padded to lengths[starts[a]].
        cost = best[:b] + group_cost + (ends[b - 1] - starts[:b]) * width[:b]
        back[b] = int(np.argmin(cost))
        best[b] = cost[back[b]]
    runs = []
    b = m
    while b > 0:
        a = back[b]
        runs.append((int(starts[a]), int(ends[b - 1])))
        b = a
    return runs[::-1]


def move(t: torch.Tensor | None, device: str, pin: bool = False) -> torch.Tensor | None:
    """`t` on `device` (asynchronously from pinned memory), or with `pin` in pinned host
    memory; None stays None."""
    if t is None:
        return None
    return t.pin_memory() if pin else t.to(device, non_blocking=True)


@dataclass(slots=True)
class _Group:
    """`pairs` consecutive pairs of a packed batch, whose tokens are `tokens` = [start, end) of
    it, padded together to `width` for attention."""

    tokens: tuple[int, int]
    pairs: int
    width: int
    slots: torch.Tensor | None   # token k of the group -> its place in [pairs x width]; None: no padding
    mask: torch.Tensor | None    # [pairs, 1, 1, width] bool, True where a key is real


@dataclass(slots=True)
class Packed:
    """The model inputs of a packed batch (built on the CPU, moved to the device whole)."""

    ids: torch.Tensor        # [tokens] int64
    types: torch.Tensor      # [tokens] int64
    positions: torch.Tensor  # [tokens] int64
    firsts: torch.Tensor     # [pairs]: where each pair's [CLS] is
    groups: list[_Group]
    lengths: np.ndarray      # tokens of each pair (host side, for callers)

    @classmethod
    def build(cls, ids: np.ndarray, types: np.ndarray, positions: np.ndarray,
              lengths: np.ndarray, group_cost: float = GROUP_COST) -> "Packed":
        offsets = np.cumsum(lengths) - lengths
        groups = []
        for start, end in plan_groups(lengths, group_cost):
            t0, t1 = int(offsets[start]), int(offsets[end - 1] + lengths[end - 1])
            width = int(lengths[start])
            pairs = end - start
            part = lengths[start:end]
            if np.all(part == width):
                groups.append(_Group((t0, t1), pairs, width, None, None))
                continue
            row = np.repeat(np.arange(pairs), part)
            slots = row * width + positions[t0:t1]
            mask = np.arange(width)[None, :] < part[:, None]
            groups.append(_Group((t0, t1), pairs, width, torch.from_numpy(slots),
                                 torch.from_numpy(mask[:, None, None, :])))
        return cls(torch.from_numpy(ids), torch.from_numpy(types), torch.from_numpy(positions),
                   torch.from_numpy(offsets), groups, lengths)

    def to(self, device: str, pin: bool = False) -> "Packed":
        """The same batch on `device` (or, with `pin`, in pinned host memory)."""
        groups = [_Group(g.tokens, g.pairs, g.width, move(g.slots, device, pin),
                         move(g.mask, device, pin)) for g in self.groups]
        return Packed(*(move(t, device, pin) for t in (  # type: ignore[arg-type]
            self.ids, self.types, self.positions, self.firsts)), groups, self.lengths)


def unsupported(model: torch.nn.Module) -> str | None:
    """Why `model` cannot run packed (None when it can): only BERT sequence classifiers with
    absolute positions are: `bert.py`'s, or `transformers`' (not imported for the question: a
    model of its classes means it already is)."""
    from mgeo.worker.inference.bert import BertClassifier

    hf = sys.modules.get("transformers")
    if not isinstance(model, BertClassifier) and (
            hf is None or not isinstance(model, hf.BertForSequenceClassification)):
        return f"{type(model).__name__} is not a BertForSequenceClassification"
    config = model.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {config.position_embedding_type} is not absolute"
    if config.is_decoder or model.bert.pooler is None:
        return "a decoder or pooler-less BERT"
    return None


class PackedBert:
    """Runs a BertForSequenceClassification on `Packed` inputs; returns logits [pairs, labels]."""

    def __init__(self, model: torch.nn.Module):
        reason = unsupported(model)
        if reason is not None:
            raise ValueError(f"packed layout: {reason}; use --batch-layout padded")
        self.model = model
        bert = model.bert
        self.embeddings = bert.embeddings
        self.pooler = bert.pooler
        config = model.config
        self.heads = config.num_attention_heads
        self.head_size = config.hidden_size // self.heads
        self.layers = []
        for layer in bert.encoder.layer:
            att = layer.attention.self
            parts = (att.query, att.key, att.value)
            if all(type(p) is torch.nn.Linear for p in parts):
                fused = torch.nn.Linear(config.hidden_size, 3 * att.all_head_size,
                                        device=att.query.weight.device,
                                        dtype=att.query.weight.dtype)
                fused.weight.data = torch.cat([p.weight for p in parts])
                fused.bias.data = torch.cat([p.bias for p in parts])
                fused.requires_grad_(False)
                project = fused
            else:  # quantized (or otherwise wrapped) projections: run them one by one
                def project(x, parts=parts):
                    return torch.cat([p(x) for p in parts], dim=-1)
            self.layers.append((project, layer.attention.output, layer.intermediate,
                                layer.output))

    def __call__(self, batch: Packed) -> torch.Tensor:
        e = self.embeddings
        x = e.word_embeddings(batch.ids) + e.token_type_embeddings(batch.types)
        x = e.LayerNorm(x + e.position_embeddings(batch.positions))
        for project, att_out, inter, out in self.layers:
            ctx = self._attention(project(x), batch.groups)
            x = att_out.LayerNorm(att_out.dense(ctx) + x)
            x = out.LayerNorm(out.dense(inter.intermediate_act_fn(inter.dense(x))) + x)
        pooled = self.pooler.activation(self.pooler.dense(x.index_select(0, batch.firsts)))
        return self.model.classifier(pooled)

    def _attention(self, qkv: torch.Tensor, groups: list[_Group]) -> torch.Tensor:
        """Self-attention of each pair over its own tokens; [tokens, 3 x hidden] in, [tokens,
        hidden] out."""
        h, d = self.heads, self.head_size
        out = []
        for g in groups:
            part = qkv[g.tokens[0]:g.tokens[1]]
            if g.slots is not None:
                padded = part.new_zeros(g.pairs * g.width, part.shape[1])
                part = padded.index_copy_(0, g.slots, part)
            q, k, v = part.view(g.pairs, g.width, 3, h, d).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask)
            ctx = ctx.transpose(1, 2).reshape(g.pairs * g.width, h * d)
            out.append(ctx if g.slots is None else ctx.index_select(0, g.slots))
        return out[0] if len(out) == 1 else torch.cat(out)
