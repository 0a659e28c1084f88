"""`mgeo train`: fine-tune a sequence-classification model on labelled address pairs.

Pairs are encoded exactly as MGeo encodes them, `tokenizer(addr1, addr2, truncation=True,
max_length=...)` with token_type_ids 0/1, so whatever is trained here is served unchanged by the
worker. Training is seeded end to end (split, initialisation, data order, dropout) and uses
deterministic kernels, so one seed on one machine gives the same metrics every run.

Batches are bucketed by length (sorted inside a window of many batches, then shuffled as whole
batches) and padded only to their own longest pair: on CPU this is most of the speed. Every
score it reports is measured on the worker's serving path (training/evaluate.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mgeo.training.card import model_card, plot_curve
from mgeo.wire import MGEO_LABELS
from mgeo.writers import atomic_directory

log = logging.getLogger("mgeo.train")

LABELS = MGEO_LABELS  # id order of fresh models
_WINDOW_BATCHES = 50  # batches sorted together by length


# ---------------------------------------------------------------------------------------------
# Data


def read_pairs(path: Path) -> list[dict[str, str]]:
    """Labelled pairs from a CSV (id,addr1,addr2,label) or JSONL file; bad lines are errors."""
    from mgeo.readers import read_rows

    pairs, problems = [], []
    for row in read_rows(path):
        obj = row.obj
        if obj is None:
            problems.append(f"line {row.line}: {row.problem}")
            continue
        label = obj.get("label") or (obj.get("meta") or {}).get("label")
        a, b = obj.get("addr1"), obj.get("addr2")
        if not isinstance(a, str) or not isinstance(b, str) or not label:
            problems.append(f"line {row.line}: needs addr1, addr2 and label")
            continue
        pairs.append({"id": str(obj.get("id", row.line)), "addr1": a, "addr2": b,
                      "label": str(label)})
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"{path}: {len(problems)} unusable lines: "
                         + "; ".join(problems[:5]) + more)
    if not pairs:
        raise ValueError(f"{path} holds no pairs; it needs a header id,addr1,addr2,label")
    return pairs


def split(pairs: Sequence[dict], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded random split; the eval part has at least one pair."""
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(pairs) - 1, max(1, round(len(pairs) * eval_fraction)))
    return [pairs[i] for i in order[n_eval:]], [pairs[i] for i in order[:n_eval]]


@dataclass
class Encoded:
    ids: list[list[int]]
    types: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def encode(tokenizer, pairs: Sequence[dict], label2id: dict[str, int],
           max_length: int) -> Encoded:
    """Tokenize as MGeo does: `[CLS] addr1 [SEP] addr2 [SEP]` with token_type_ids."""
    enc = tokenizer([p["addr1"] for p in pairs], [p["addr2"] for p in pairs],
                    truncation=True, max_length=max_length, return_token_type_ids=True)
    return Encoded(enc["input_ids"], enc["token_type_ids"],
                   [label2id[p["label"]] for p in pairs])


def bucketed_batches(lengths: Sequence[int], batch_size: int,
                     rng: random.Random) -> list[list[int]]:
    """One epoch of batches: shuffled, sorted by length inside windows, batch order shuffled."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * _WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(data: Encoded, idx: Sequence[int], pad_id: int, device):
    """Tensors of one batch, padded to its own longest pair."""
    import torch

    width = max(len(data.ids[i]) for i in idx)
    ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    types = torch.zeros((len(idx), width), dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        n = len(data.ids[i])
        ids[row, :n] = torch.tensor(data.ids[i])
        types[row, :n] = torch.tensor(data.types[i])
        mask[row, :n] = 1
    labels = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
    return ({"input_ids": ids.to(device), "token_type_ids": types.to(device),
             "attention_mask": mask.to(device)}, labels.to(device))


# ---------------------------------------------------------------------------------------------
# Model


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch sees no GPU; use --device cpu or auto")
    return torch.device(name)


def fresh_model(settings, tok_dir: Path, labels: Sequence[str] = LABELS):
    """(tokenizer, model): a small BERT with the char tokenizer, initialised from the seed
    with a character-matching first layer (`matching_init`)."""
    from transformers import BertForSequenceClassification

    from mgeo.training.vocab import char_bert

    tokenizer, config = char_bert(
        tok_dir, layers=settings.layers, hidden=settings.hidden, heads=settings.heads,
        intermediate=settings.intermediate, labels=labels, dropout=settings.dropout,
        max_length=max(128, settings.max_length), max_position=max(512, settings.max_length))
    model = BertForSequenceClassification(config)
    matching_init(model, tokenizer.pad_token_id)
    return tokenizer, model


# Standard deviations of the embeddings at initialisation (BERT's are all 0.02).
_WORD_STD = 0.1
_POSITION_STD = 0.02
_SEGMENT_STD = 0.05


def matching_init(model, pad_id: int | None) -> None:
    """Start the first layer as a character matcher, so a fresh model need not discover it.

    Matching addresses is mostly "which characters of one side occur on the other side". From
    BERT's initialisation a small model sits for thousands of steps at the label prior before
    it finds that (on 107,000 generated pairs, 3,010 steps of 32: macro-F1 0.52 from BERT's
    initialisation, 0.91 from this one). So:

    - the embedding space is split in two halves: characters live in the first, positions
      and segments in the second;
    - the first layer's query and key projections start as the identity on the character
      half and zero on the other. Its heads over the character half therefore attend, from
      step one, to the same character wherever it occurs, and what they read carries that
      occurrence's segment: "this character is also on the other side". Its heads over the
      other half attend uniformly, which hands [CLS] the mean over the pair.

    Only the starting point changes: training moves every weight, and the architecture and
    what the worker loads are plain BERT.
    """
    import torch

    h = model.config.hidden_size
    half = h // 2
    emb = model.bert.embeddings
    attn = model.bert.encoder.layer[0].attention.self
    with torch.no_grad():
        word = emb.word_embeddings.weight
        word.normal_(0.0, _WORD_STD)
        word[:, half:] = 0.0
        if pad_id is not None:
            word[pad_id] = 0.0
        for table, std in ((emb.position_embeddings.weight, _POSITION_STD),
                           (emb.token_type_embeddings.weight, _SEGMENT_STD)):
            table.normal_(0.0, std)
            table[:, :half] = 0.0
        diag = torch.diag(torch.cat([torch.ones(half), torch.zeros(h - half)]))
        for proj in (attn.query, attn.key):
            proj.weight.copy_(diag)
            proj.bias.zero_()


def base_model(path: Path, data_labels: Sequence[str]):
    """(tokenizer, model) of a local checkpoint whose labels cover the data's labels."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(f"--model {path} is not a Hugging Face model directory (no "
                         "config.json); convert a ModelScope MGeo checkpoint first with "
                         "`mgeo convert`")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, local_files_only=True, trust_remote_code=False)
    known = set(model.config.label2id)
    missing = sorted(set(data_labels) - known)
    if missing:
        raise ValueError(f"--model {path} has labels {sorted(known)}, the data also has "
                         f"{missing}; relabel the data or start from a fresh model")
    return tokenizer, model


def starting_checkpoint(settings) -> Path | None:
    """The checkpoint `mgeo train` starts from: --model (as for every command), or the
    deprecated --base; None for a fresh model."""
    model, base = settings.model, getattr(settings, "base", None)
    if base is None:
        return None if model is None else Path(model)
    log.warning("--base is deprecated and will be removed: use --model %s (the checkpoint to "
                "start from)", base)
    if model is not None and Path(model).expanduser() != Path(base).expanduser():
        raise ValueError(f"--model {model} and --base {base} both name the starting checkpoint; "
                         "pass --model only")
    return Path(base)


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith("bias")
         else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class Result:
    out: Path
    metrics: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    references: list[dict[str, Any]] = field(default_factory=list)
    model: Any = None       # the trained model, on the CPU, in eval mode
    tokenizer: Any = None
    dev: dict[str, Any] | None = None  # scores on the hand-written development set
    start: Path | None = None          # the checkpoint training started from


def _seed_everything(seed: int, device) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.cuda.manual_seed_all(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def train(settings, pairs: Sequence[dict] | None = None) -> Result:
    """Train as `settings` say and save the model to `settings.out`; returns its metrics.

    `pairs` (dicts with addr1, addr2, label) take the place of --data / --synth when given.
    """
    import torch
    from tqdm import tqdm

    from mgeo.training.evaluate import (classification_report, eval_set, predict,
                                        score_dev_set, score_references)

    t_start = time.perf_counter()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    device = _device(settings.device)
    _seed_everything(settings.seed, device)

    start = starting_checkpoint(settings)
    source = _describe_source(settings, pairs)
    if pairs is None:
        pairs = _load_data(settings)
    train_pairs, eval_pairs = split(pairs, settings.eval_fraction, settings.seed)
    data_labels = sorted({p["label"] for p in pairs})

    # Built beside the destination and put in its place whole, only once everything is saved:
    # a failed or interrupted run leaves the previous model as it was.
    with atomic_directory(Path(settings.out)) as work:
        if start is not None:
            tokenizer, model = base_model(start, data_labels)
            lr = settings.lr or 3e-5
        else:
            unknown = sorted(set(data_labels) - set(LABELS))
            if unknown:
                raise ValueError(f"labels {unknown} are not MGeo's {list(LABELS)}; fix the data "
                                 "or fine-tune a --model whose config names them")
            tokenizer, model = fresh_model(settings, work)
            lr = settings.lr or 5e-4
        label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        model.to(device)

        train_data = encode(tokenizer, train_pairs, label2id, settings.max_length)
        eval_data = eval_set(tokenizer, [(p["addr1"], p["addr2"]) for p in eval_pairs],
                             settings.max_length, [label2id[p["label"]] for p in eval_pairs])
        pad_id = tokenizer.pad_token_id or 0
        steps_per_epoch = math.ceil(len(train_data) / settings.batch_size)
        total = max(1, math.ceil(settings.epochs * steps_per_epoch))
        warmup = int(total * settings.warmup)
        optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=lr)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: (s + 1) / (warmup + 1) if s < warmup
            else max(0.0, (total - s) / max(1, total - warmup)))
        eval_at = {max(1, round(total * (k + 1) / settings.evals)) for k in range(settings.evals)}
        log.info("training %s on %d pairs (%d held out) from %s: %d steps of %d pairs, lr %g, "
                 "%s", _describe_model(model), len(train_data), len(eval_data), source, total,
                 settings.batch_size, lr, device)

        rng = random.Random(settings.seed)
        lengths = [len(x) for x in train_data.ids]
        history: list[dict[str, float]] = []
        bar = tqdm(total=total, unit="step", disable=not sys.stderr.isatty(), dynamic_ncols=True)
        step, running, seen = 0, 0.0, 0
        batches: list[list[int]] = []
        while step < total:
            if not batches:
                batches = bucketed_batches(lengths, settings.batch_size, rng)
                batches.reverse()  # pop() from the end takes them in order
            model.train()
            inputs, labels = collate(train_data, batches.pop(), pad_id, device)
            loss = torch.nn.functional.cross_entropy(model(**inputs).logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            running += loss.item()
            seen += 1
            bar.update(1)
            if step in eval_at:
                logits, eval_loss = predict(model, eval_data, device)
                rep = classification_report(eval_data.labels, logits.argmax(-1).tolist(),
                                            id2label)
                point = {"step": step, "epoch": step / steps_per_epoch,
                         "train_loss": running / seen, "eval_loss": eval_loss,
                         "macro_f1": rep["macro_f1"], "accuracy": rep["accuracy"],
                         "seconds": time.perf_counter() - t_start}
                history.append(point)
                running, seen = 0.0, 0
                bar.set_postfix(loss=f"{point['train_loss']:.3f}", f1=f"{rep['macro_f1']:.3f}")
                log.info("step %d/%d (epoch %.2f): train loss %.4f, eval loss %.4f, "
                         "macro-F1 %.4f, accuracy %.4f", step, total, point["epoch"],
                         point["train_loss"], eval_loss, rep["macro_f1"], rep["accuracy"])
        bar.close()

        logits, _ = predict(model, eval_data, device)
        metrics = classification_report(eval_data.labels, logits.argmax(-1).tolist(), id2label)
        model.to("cpu")
        references = score_references(model, tokenizer, id2label, settings.max_length)
        dev = score_dev_set(model, tokenizer, label2id, id2label, settings.max_length)
        result = Result(Path(settings.out), metrics, history,
                        time.perf_counter() - t_start, total, references, model, tokenizer,
                        dev, start)
        _save(model, tokenizer, work, settings, result, source, len(train_data),
              len(eval_data), pairs, lr)
    log.info("saved %s: macro-F1 %.4f on %d held-out pairs (%s) in %.0fs", settings.out,
             metrics["macro_f1"], metrics["n"], ", ".join(
                 f"{k} P {v['precision']:.3f} R {v['recall']:.3f}"
                 for k, v in metrics["per_label"].items()), result.seconds)
    return result


def _load_data(settings) -> list[dict]:
    if settings.synth:
        from mgeo.training.synth import generate_pairs

        return generate_pairs(settings.synth, settings.seed)
    if settings.data is None:
        raise ValueError("nothing to train on: pass --data FILE (CSV/JSONL with a label "
                         "column) or --synth N (generated pairs)")
    return read_pairs(settings.data)


def _describe_source(settings, pairs) -> str:
    if pairs is not None:
        return f"{len(pairs)} pairs passed in"
    if settings.synth:
        return f"`mgeo synth` ({settings.synth} pairs, seed {settings.seed})"
    return str(settings.data)


def _describe_model(model) -> str:
    c = model.config
    n = sum(p.numel() for p in model.parameters())
    return (f"{c.model_type} {c.num_hidden_layers}x{c.hidden_size} "
            f"({c.num_attention_heads} heads, {n / 1e6:.1f}M parameters)")


# ---------------------------------------------------------------------------------------------
# Saving: weights, tokenizer, metrics, training curve, model card


def _save(model, tokenizer, out: Path, settings, result: Result, source: str, n_train: int,
          n_eval: int, pairs: Sequence[dict], lr: float) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model.config.id2label = {int(k): v for k, v in model.config.id2label.items()}
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    counts = {lab: 0 for lab in LABELS}
    for p in pairs:
        counts[p["label"]] = counts.get(p["label"], 0) + 1
    record = {"metrics": result.metrics, "dev": result.dev, "history": result.history,
              "references": result.references, "seconds": round(result.seconds, 1),
              "steps": result.steps, "lr": lr, "train_pairs": n_train, "eval_pairs": n_eval,
              "label_counts": counts, "source": source,
              "start": None if result.start is None else str(result.start),
              "command": command_line(settings)}
    (out / "training_metrics.json").write_text(
        json.dumps(record, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    plotted = settings.plot and plot_curve(result.history, out / "training_curve.png")
    (out / "README.md").write_text(
        model_card(model, settings, record, plotted), encoding="utf-8")


def command_line(settings) -> str:
    """The `mgeo train` command that reproduces `settings` (defaults left out)."""
    from mgeo.training.settings import TrainSettings

    args = []
    for name, info in TrainSettings.model_fields.items():
        if name in ("log_level", "log_format"):
            continue
        value = getattr(settings, name)
        if value == info.get_default(call_default_factory=True):
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else f"--no-{name.replace('_', '-')}")
        else:
            args.append(f"{flag} {value}")
    return "mgeo train " + " ".join(args)


def _stop_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds `train`, which removes its temporary directory


def run(settings) -> int:
    """`mgeo train`: train, save, report; exit status 2 on a usage error.

    SIGTERM stops it as Ctrl-C does: the destination keeps its previous model and no
    temporary directory is left beside it.
    """
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        result = train(settings)
    except ValueError as exc:
        print(f"mgeo train: {exc}", file=sys.stderr)
        return 2
    m = result.metrics
    print(f"saved {result.out}: macro-F1 {m['macro_f1']:.4f}, accuracy {m['accuracy']:.4f} on "
          f"{m['n']} held-out pairs, {result.seconds / 60:.1f} min")
    for name, v in m["per_label"].items():
        print(f"  {name:<14} precision {v['precision']:.4f}  recall {v['recall']:.4f}  "
              f"f1 {v['f1']:.4f}  n {v['support']}")
    if result.dev:
        d = result.dev["metrics"]
        print(f"hand-written development set: macro-F1 {d['macro_f1']:.4f}, accuracy "
              f"{d['accuracy']:.4f} on {d['n']} pairs ("
              + ", ".join(f"{k} F1 {v['f1']:.3f}" for k, v in d["per_label"].items()) + ")")
    return 0
