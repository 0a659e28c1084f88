"""Scoring a model under training as the worker scores it.

Every figure `mgeo train` reports (the held-out split during and after training, the
hand-written development set, the three reference pairs) is measured on exactly the inputs the
worker's engine feeds the model: the serving `PairEncoder`'s token ids, cut into batches by the
engine's token budget and laid out by its padded layout, through the same model call
(`ClassifierCall`). So the model card's scores are those of the serving path, not of the
`transformers` tokenizer call that training batches are built with (the two agree, which
tests/test_tokenize.py proves; this makes the card independent of that proof).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mgeo.worker.inference.engine import CPU_TOKEN_BUDGET
from mgeo.worker.inference.layouts import Batch, ClassifierCall, PaddedLayout
from mgeo.worker.inference.tokenize import PairEncoder

log = logging.getLogger("mgeo.train")


@dataclass
class EvalSet:
    """Pairs laid out once, as the engine lays them out on a CPU, with their label ids (None
    for pairs without a label the model knows)."""

    batches: list[Batch]
    labels: list[int] | None
    size: int

    def __len__(self) -> int:
        return self.size


def eval_set(tokenizer, pairs: Sequence[tuple[str, str]], max_length: int,
             labels: Sequence[int] | None = None) -> EvalSet:
    """`pairs` as the engine (padded layout, its CPU token budget) feeds them to the model."""
    encoder = PairEncoder(tokenizer, max_length)
    enc = encoder.encode(pairs)
    layout = PaddedLayout(encoder)
    plan = layout.plan(enc.lengths, np.arange(len(pairs)), CPU_TOKEN_BUDGET) if pairs else []
    return EvalSet([layout.build(enc, rows) for rows in plan],
                   None if labels is None else list(labels), len(pairs))


def predict(model, data: EvalSet, device) -> tuple[torch.Tensor, float | None]:
    """(logits in input order, mean cross-entropy loss or None without labels); the model is
    left in eval mode, its gradients untouched."""
    model.eval()
    call = ClassifierCall(model)
    logits = torch.empty((len(data), model.config.num_labels))
    labels = None if data.labels is None else torch.tensor(data.labels, dtype=torch.long)
    total = 0.0
    loss = torch.nn.CrossEntropyLoss(reduction="sum")
    with torch.inference_mode():
        for batch in data.batches:
            rows = torch.from_numpy(batch.rows)
            out = call(batch.inputs.to(device)).float().cpu()
            logits[rows] = out
            if labels is not None:
                total += float(loss(out, labels[rows]))
    return logits, None if labels is None else total / max(1, len(data))


def classification_report(gold: Sequence[int], pred: Sequence[int],
                          id2label: dict[int, str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-label precision/recall/F1/support."""
    per: dict[str, dict[str, float]] = {}
    for k, name in sorted(id2label.items()):
        tp = sum(1 for g, p in zip(gold, pred) if g == k and p == k)
        fp = sum(1 for g, p in zip(gold, pred) if g != k and p == k)
        fn = sum(1 for g, p in zip(gold, pred) if g == k and p != k)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[name] = {"precision": prec, "recall": rec, "f1": f1, "support": tp + fn}
    present = [v for v in per.values() if v["support"]]
    return {"accuracy": sum(1 for g, p in zip(gold, pred) if g == p) / max(1, len(gold)),
            "macro_f1": sum(v["f1"] for v in present) / max(1, len(present)),
            "per_label": per, "n": len(gold)}


def score_references(model, tokenizer, id2label: dict[int, str],
                     max_length: int) -> list[dict[str, Any]]:
    """The model's probabilities on the three published MGeo reference pairs."""
    from mgeo.training.synth import REFERENCE_PAIRS

    data = eval_set(tokenizer, [(p["addr1"], p["addr2"]) for p in REFERENCE_PAIRS], max_length)
    logits, _ = predict(model, data, "cpu")
    out = []
    for p, row in zip(REFERENCE_PAIRS, torch.softmax(logits, -1).tolist()):
        best = max(range(len(row)), key=row.__getitem__)
        out.append({"addr1": p["addr1"], "addr2": p["addr2"], "expected": p["label"],
                    "predicted": id2label[best],
                    "probs": {id2label[i]: round(v, 4) for i, v in enumerate(row)}})
    return out


def score_dev_set(model, tokenizer, label2id: dict[str, int], id2label: dict[int, str],
                  max_length: int, path: Path | None = None) -> dict[str, Any] | None:
    """Macro-F1, per-label scores, confusion matrix and per-rule recall on the hand-written
    development set (training/data/dev_pairs.csv); None when it is not installed or the model
    lacks its labels."""
    from mgeo.training import devset

    path = path or devset.dev_set_path()
    if path is None:
        log.info("no development set installed (training/data/dev_pairs.csv): not scored")
        return None
    rows = devset.read_dev_set(path)
    if not {r["label"] for r in rows} <= set(label2id):
        log.info("the model's labels %s do not cover the development set's: not scored",
                 sorted(label2id))
        return None
    gold_ids = [label2id[r["label"]] for r in rows]
    data = eval_set(tokenizer, [(r["addr1"], r["addr2"]) for r in rows], max_length, gold_ids)
    logits, _ = predict(model, data, "cpu")
    pred_ids = logits.argmax(-1).tolist()
    pred = [id2label[i] for i in pred_ids]
    gold = [r["label"] for r in rows]
    metrics = classification_report(gold_ids, pred_ids, id2label)
    labels = [id2label[i] for i in sorted(id2label)]
    shown = Path("training") / "data" / path.name if path.parent.name == "data" else path
    return {"path": str(shown), "metrics": metrics,
            "confusion": devset.confusion(gold, pred, labels),
            "by_tag": devset.by_tag(rows, pred)}
