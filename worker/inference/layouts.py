"""How a batch of pairs reaches the model: the two batch layouts behind one interface, and the
model call on either.

A `Layout` plans a call's pairs into batches of at most a token budget (`plan`) and lays one
batch out as model inputs (`build`):

- `PackedLayout` (BERT models; the default on a CPU): the pairs' tokens end to end, no padding
  except inside attention (`packed.py`), so a batch of pairs of all lengths costs what its
  tokens cost. The budget counts real tokens.
- `PaddedLayout` (any architecture): `pairs x longest pair` tensors for the `transformers`
  call; sorting by length (`batcher.plan_batches`) keeps the padding small in large batches.
  The budget counts padded tokens.

`ModelCall` is what the engine runs each batch through: `ClassifierCall` by default, or
whatever a caller injects (a fake, a fault) around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from mgeo.worker.inference.batcher import plan_batches, round_up
from mgeo.worker.inference.packed import Packed, PackedBert, move, unsupported
from mgeo.worker.inference.tokenize import Encoded, PairEncoder


@dataclass(slots=True)
class Padded:
    """The model inputs of a padded batch: [pairs, width] ids and token types, and the
    attention mask ([pairs, 1, 1, width] bool) or None when nothing is padding."""

    ids: torch.Tensor
    types: torch.Tensor
    mask: torch.Tensor | None

    def to(self, device: str, pin: bool = False) -> "Padded":
        return Padded(*(move(t, device, pin) for t in (  # type: ignore[arg-type]
            self.ids, self.types, self.mask)))


Inputs = Padded | Packed


@dataclass(slots=True)
class Batch:
    """One planned batch: its rows of the call's `Encoded` pairs, what it costs the linear
    layers (padded tokens, or real ones when packed) and its model inputs."""

    rows: np.ndarray
    cost: int
    inputs: Inputs


class Layout(Protocol):
    name: str

    def plan(self, lengths: np.ndarray, rows: np.ndarray, budget: int) -> list[np.ndarray]:
        """`rows` (of pairs whose token counts are `lengths`) cut into batches of at most
        `budget` tokens each, longest pairs first; a pair over the budget alone."""

    def build(self, enc: Encoded, rows: np.ndarray) -> Batch:
        """The model inputs of pairs `rows` of `enc`, on the host."""


class PaddedLayout:
    """[pairs x longest pair] tensors; widths rounded up to `multiple` (a GPU's tensor cores)."""

    name = "padded"

    def __init__(self, encoder: PairEncoder, multiple: int = 1):
        self.encoder = encoder
        self.multiple = multiple

    def plan(self, lengths: np.ndarray, rows: np.ndarray, budget: int) -> list[np.ndarray]:
        return [rows[np.asarray(part, dtype=np.int64)] for part in plan_batches(
            lengths[rows].tolist(), budget, multiple=self.multiple)]

    def build(self, enc: Encoded, rows: np.ndarray) -> Batch:
        width = round_up(int(enc.lengths[rows].max()), self.multiple)
        ids, types, mask = self.encoder.pad(enc, rows, width)
        # The attention mask goes in prepared (batch, 1, 1, width), the shape SDPA broadcasts:
        # given a 2-D mask, transformers checks on the device whether it pads at all, a
        # device-to-host sync before every batch. Without padding there is no mask at all,
        # which lets SDPA take its fastest kernel.
        attention = None if mask.all() else torch.from_numpy(mask.astype(bool)[:, None, None, :])
        return Batch(rows, len(rows) * width,
                     Padded(torch.from_numpy(ids), torch.from_numpy(types), attention))


# The fewest tokens a call is cut into lanes for (see PackedLayout.plan).
LANE_TOKENS = 512


class PackedLayout:
    """The pairs' tokens end to end; each batch sorted longest first for its attention groups.

    A call is cut into equal batches, as many as a multiple of `lanes`, so that no lane is left
    with a larger share of it than another; a call too small to give each share `LANE_TOKENS`
    tokens is cut into fewer (one, under a light load: the other lane takes the next call)."""

    name = "packed"

    def __init__(self, encoder: PairEncoder, lanes: int = 1):
        self.encoder = encoder
        self.lanes = lanes

    def plan(self, lengths: np.ndarray, rows: np.ndarray, budget: int) -> list[np.ndarray]:
        rows = rows[np.argsort(-lengths[rows], kind="stable")]
        ends = np.cumsum(lengths[rows])
        total = int(ends[-1]) if len(ends) else 0
        need = max(1, -(-total // budget))
        count = -(-need // self.lanes) * self.lanes
        # A share of fewer than LANE_TOKENS tokens is not worth a lane of its own: each batch
        # pays a fixed cost (~4 ms on a CPU core, the work of two pairs), and the small calls
        # of a light load would pay it twice for each.
        count = min(count, max(need, total // LANE_TOKENS))
        cuts = np.searchsorted(ends, np.arange(1, count) * (total / count), side="right")
        parts = []
        for part in np.split(rows, cuts):
            # A cut may leave a part one pair over the budget: cut that one by the budget.
            while len(part) > 1 and lengths[part].sum() > budget:
                keep = max(1, int(np.searchsorted(np.cumsum(lengths[part]), budget, "right")))
                parts.append(part[:keep])
                part = part[keep:]
            if len(part):
                parts.append(part)
        return parts

    def build(self, enc: Encoded, rows: np.ndarray) -> Batch:
        lengths = enc.lengths[rows]
        return Batch(rows, int(lengths.sum()),
                     Packed.build(*self.encoder.pack(enc, rows), lengths))


def resolve_layout(wanted: str, model: torch.nn.Module, device: str) -> str:
    """packed where the model supports it and it is known to pay (auto: on a CPU), else
    padded."""
    reason = unsupported(model)
    if wanted == "packed" and reason is not None:
        raise ValueError(f"--batch-layout packed: {reason}; only BERT sequence "
                         "classifiers run packed, use --batch-layout padded (or auto)")
    if wanted == "auto":
        return "packed" if reason is None and device == "cpu" else "padded"
    return wanted


def layout_for(name: str, encoder: PairEncoder, *, multiple: int = 1, lanes: int = 1) -> Layout:
    """The layout of a resolved name ("packed" or "padded")."""
    return PackedLayout(encoder, lanes) if name == "packed" else PaddedLayout(encoder, multiple)


class ModelCall(Protocol):
    def __call__(self, inputs: Inputs) -> torch.Tensor:
        """Logits [pairs, labels] of one batch, already on the model's device."""


class ClassifierCall:
    """A sequence classifier called as `transformers`' are (`bert.py`'s BERT, or a `transformers`
    model) on a batch of either layout: padded batches through its own forward, packed ones
    through `PackedBert` (built with `packed`, after the model's weights have their final device
    and dtype: it fuses a copy of them)."""

    def __init__(self, model: torch.nn.Module, packed: bool = False):
        self.model = model
        self.packed = PackedBert(model) if packed else None

    def __call__(self, inputs: Inputs) -> torch.Tensor:
        if isinstance(inputs, Packed):
            if self.packed is None:
                raise ValueError("a packed batch for a model call built without packed=True")
            return self.packed(inputs)
        return self.model(input_ids=inputs.ids, token_type_ids=inputs.types,
                          attention_mask=inputs.mask).logits
