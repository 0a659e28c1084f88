"""The options of `mgeo synth` and `mgeo train`, beside the training code.

Like every settings module it imports no torch (the base install holds it, and `mgeo train
--help` needs only pydantic); its classes compose the option mixins of mgeo.settings and take
their --help groups from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from mgeo.settings import (FRESH_MODEL, IO, MODEL, SYNTH, TRAINING, Base, DeviceOption,
                           MaxLengthOption, ModelPathOption, metavar)


class SynthSettings(Base):
    """`mgeo synth`: labelled synthetic Chinese address pairs for training and tests."""

    cli_group: ClassVar[str] = SYNTH
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {IO: ("out",)}

    out: Path = Field(Path("pairs.csv"), description="Output CSV or JSONL file.")
    pairs: int = Field(20_000, ge=1, description="Number of pairs.")
    seed: int = Field(0, description="Random seed; the same seed gives the same file.")


class TrainSettings(MaxLengthOption, DeviceOption, ModelPathOption):
    """`mgeo train`: fine-tune a sequence-classification model on labelled pairs."""

    cli_group: ClassVar[str] = TRAINING
    cli_groups: ClassVar[dict[str, tuple[str, ...]]] = {
        IO: ("data", "synth", "out", "plot"),
        MODEL: ("model", "base", "threads"),
        FRESH_MODEL: ("layers", "hidden", "heads", "intermediate", "dropout"),
    }

    data: Path | None = Field(
        None, description="CSV/JSONL of labelled pairs (id,addr1,addr2,label); or use --synth.")
    synth: int | None = Field(
        None, ge=10, description="Train on this many pairs from `mgeo synth` (made with --seed) "
                                 "instead of --data.")
    out: Path = Field(..., description="Directory the trained model is saved to.",
                      json_schema_extra=metavar("DIR"))
    model: Path | None = Field(
        None,
        description="Checkpoint to start from (a local Hugging Face directory: a converted "
                    "MGeo or an earlier `mgeo train` output), fine-tuned at --lr. Default: a "
                    "fresh small BERT (--layers, --hidden, --heads).",
        json_schema_extra=metavar("DIR"))
    base: Path | None = Field(
        None, description="Deprecated alias of --model; will be removed.",
        json_schema_extra=metavar("DIR"))
    epochs: float = Field(3.0, gt=0, description="Passes over the training split.")
    batch_size: int = Field(64, ge=1, description="Pairs per optimizer step.")
    lr: float | None = Field(
        None, gt=0, description="Peak learning rate (linear warm-up and decay). Default: 5e-4 "
                                "for a fresh model, 3e-5 when fine-tuning --model.",
        json_schema_extra=metavar("RATE"))
    warmup: float = Field(0.06, ge=0, lt=1, description="Share of the steps spent warming up.",
                          json_schema_extra=metavar("FRACTION"))
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases "
                                                         "and LayerNorm).")
    eval_fraction: float = Field(0.1, gt=0, lt=0.9, description="Share held out for evaluation.",
                                 json_schema_extra=metavar("FRACTION"))
    evals: int = Field(10, ge=1, description="Evaluations on the held-out split during "
                                             "training (points of the training curve).")
    seed: int = Field(0, description="Seed of the split, the initialisation and the data order.")
    layers: int = Field(4, ge=1, description="Layers of a fresh model.")
    hidden: int = Field(128, ge=32, description="Hidden size of a fresh model.")
    heads: int = Field(4, ge=1, description="Attention heads of a fresh model.")
    intermediate: int | None = Field(
        None, ge=32, description="Feed-forward size of a fresh model (default: 4 x hidden).")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout of a fresh model.",
                           json_schema_extra=metavar("FRACTION"))
    threads: int | None = Field(None, ge=1, description="CPU threads for torch (default: all).")
    plot: bool = Field(True, description="Write training_curve.png beside the model "
                                         "(needs matplotlib).")
