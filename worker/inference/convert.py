"""`mgeo convert SRC DST`: a ModelScope MGeo checkpoint to a Hugging Face BERT classifier.

MGeo's text path is a plain BERT: ModelScope keeps it under `bert.text_encoder.*` beside GIS
modules that text-only matching never runs, and its layers from `fusion_layer` on (which carry
cross-attention) are skipped in text mode. Converting once to a `BertForSequenceClassification`
directory lets the worker load the model with stock transformers and no ModelScope install.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
from pathlib import Path

from mgeo.writers import atomic_directory
from mgeo.settings import ConvertSettings
from mgeo.wire import MGEO_LABELS as DEFAULT_LABELS
from mgeo.worker.inference.model import quiet_progress

log = logging.getLogger(__name__)

_TEXT_PREFIX = "bert.text_encoder."
_DROP_PREFIXES = ("bert.gis_encoder.", "bert.gis2text.", "bert.gis_type.")
_LAYER = re.compile(r"^bert\.encoder\.layer\.(\d+)\.")
# MGeo-only config keys; the rest of config.json is a BertConfig.
_MGEO_CONFIG_KEYS = {
    "fusion_layer", "gis_embedding", "gis_encoder", "encoder_width", "add_cross_attention",
    "rel_type_vocab_size", "absolute_x_vocab_size", "absolute_y_vocab_size",
    "relative_x_vocab_size", "relative_y_vocab_size", "prov_vocab_size", "city_vocab_size",
    "dist_vocab_size", "architectures", "auto_map", "_name_or_path", "transformers_version",
    "model_type",
}
_TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json",
                    "tokenizer.json", "added_tokens.json")
_WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors", "pytorch_model.pt")


def run(settings: ConvertSettings) -> int:
    try:
        out = convert(settings.src, settings.dst, labels=settings.labels)
    except ValueError as exc:
        print(f"mgeo convert: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}; score with: mgeo score --model {out} --in PAIRS --out RESULTS",
          file=sys.stderr)
    return 0


def convert(src, dst, *, labels: list[str] | None = None) -> Path:
    """Write the Hugging Face directory `dst` (new or empty) from the ModelScope dir `src`."""
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if not src.is_dir():
        raise ValueError(f"{src} is not a directory; pass the ModelScope checkpoint directory")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ValueError(f"{dst} exists and is not empty; pick a new directory")
    raw = _read_config(src)
    state = _read_weights(src)
    state, layers = rename_state_dict(state, raw)
    id2label = _labels(src, raw, labels, state)
    model = _build(raw, layers, id2label, state)

    with atomic_directory(dst) as tmp:  # (dst is new or empty: nothing of the user's is lost)
        with quiet_progress():
            model.save_pretrained(tmp)
        _write_tokenizer(src, tmp, raw)
    log.info("converted %s -> %s: %d layers, labels %s", src, dst, layers, id2label)
    return dst


def _read_config(src: Path) -> dict:
    path = src / "config.json"
    if not path.is_file():
        raise ValueError(f"{src} has no config.json; a ModelScope MGeo checkpoint has "
                         "config.json, configuration.json, pytorch_model.bin and vocab.txt")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if raw.get("gis_embedding"):
        raise ValueError(f"{path}: gis_embedding={raw['gis_embedding']}: this checkpoint's "
                         "text encoder embeds GIS features, so it has no text-only path to "
                         "convert")
    return raw


def _read_weights(src: Path) -> dict:
    """The checkpoint's tensors, read without unpickling code (weights_only=True)."""
    import torch

    for name in _WEIGHT_FILES:
        path = src / name
        if not path.is_file():
            continue
        if name.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # an unpickling refusal names what it refused
            raise ValueError(f"cannot read {path} as plain tensors: {exc}") from exc
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
        return state
    raise ValueError(f"{src} has no weights; expected one of {', '.join(_WEIGHT_FILES)}")


def rename_state_dict(state: dict, config: dict) -> tuple[dict, int]:
    """ModelScope keys -> BertForSequenceClassification keys, and the layer count to keep.

    `bert.text_encoder.X` becomes `bert.X`; `classifier.*` stays; GIS modules and
    `position_ids` buffers go. If layers carry cross-attention, those from `fusion_layer` on
    are cut: text mode never runs them. Anything unrecognised is an error, not a silent drop.
    """
    layers = int(config["num_hidden_layers"])
    out: dict = {}
    unknown: list[str] = []
    for key, value in state.items():
        if key.endswith("position_ids") or key.startswith(_DROP_PREFIXES):
            continue
        if key.startswith(_TEXT_PREFIX):
            key = "bert." + key[len(_TEXT_PREFIX):]
        elif not key.startswith(("bert.", "classifier.")):
            unknown.append(key)
            continue
        key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
        key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
        out[key] = value
    if unknown:
        raise ValueError(f"{len(unknown)} weights are neither MGeo text encoder, GIS nor "
                         f"classifier, e.g. {unknown[:3]}; is this an MGeo checkpoint?")
    fusion = config.get("fusion_layer")
    has_cross = any(".crossattention." in k for k in out)
    if fusion is not None and has_cross and int(fusion) < layers:
        layers = int(fusion)
        out = {k: v for k, v in out.items()
               if not (m := _LAYER.match(k)) or int(m.group(1)) < layers}
    elif fusion is not None and int(fusion) < layers:
        log.warning("fusion_layer=%s but no cross-attention weights: keeping all %d layers",
                    fusion, layers)
    return out, layers


def _labels(src: Path, raw: dict, wanted: list[str] | None, state: dict) -> dict[int, str]:
    """id2label from the checkpoint (config.json, then configuration.json), else --labels."""
    found = _checkpoint_labels(raw)
    if found is None and (src / "configuration.json").is_file():
        found = _checkpoint_labels(json.loads((src / "configuration.json").read_text("utf-8")))
    if found is not None and wanted and list(found.values()) != list(wanted):
        raise ValueError(f"the checkpoint names its labels {list(found.values())} but --labels "
                         f"says {list(wanted)}; drop --labels to keep the checkpoint's")
    if found is None and wanted:
        found = dict(enumerate(wanted))
    if found is None:
        found = dict(enumerate(DEFAULT_LABELS))
        log.warning("the checkpoint names no labels: assuming id order %s; if that is wrong, "
                    "convert again with --labels in id order", list(DEFAULT_LABELS))
    rows = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
    if rows is not None and rows != len(found):
        raise ValueError(f"the classifier has {rows} outputs but the labels are "
                         f"{list(found.values())}; pass --labels with {rows} names in id order")
    return found


def _checkpoint_labels(cfg: dict) -> dict[int, str] | None:
    """Labels named anywhere ModelScope keeps them; None for none or transformers' LABEL_n."""
    for scope in (cfg, cfg.get("model") or {}, cfg.get("preprocessor") or {}):
        if not isinstance(scope, dict):
            continue
        if isinstance(scope.get("id2label"), dict):
            labels = {int(k): str(v) for k, v in scope["id2label"].items()}
        elif isinstance(scope.get("label2id"), dict):
            labels = {int(v): str(k) for k, v in scope["label2id"].items()}
        else:
            continue
        if labels and not all(re.fullmatch(r"LABEL_\d+", v) for v in labels.values()):
            if sorted(labels) != list(range(len(labels))):
                raise ValueError(f"label ids {sorted(labels)} are not 0..{len(labels) - 1}")
            return dict(sorted(labels.items()))
    return None


def _build(raw: dict, layers: int, id2label: dict[int, str], state: dict):
    """A BertForSequenceClassification holding exactly these weights (strict load)."""
    from transformers import BertConfig, BertForSequenceClassification

    fields = {k: v for k, v in raw.items() if k not in _MGEO_CONFIG_KEYS}
    fields.update(num_hidden_layers=layers, num_labels=len(id2label), id2label=id2label,
                  label2id={v: k for k, v in id2label.items()})
    config = BertConfig(**fields)
    config.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"the weights do not fit a {layers}-layer BERT classifier: "
                         f"{str(exc)[:1500]}") from exc
    return model.eval()


def _write_tokenizer(src: Path, out: Path, raw: dict) -> None:
    """Copy the tokenizer files and make sure they load as a fast BERT tokenizer."""
    from transformers import AutoTokenizer

    if not (src / "vocab.txt").is_file() and not (src / "tokenizer.json").is_file():
        raise ValueError(f"{src} has no vocab.txt (or tokenizer.json) to copy")
    for name in _TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, out / name)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8")) if cfg_path.is_file() else {}
    if cfg.get("tokenizer_class") not in ("BertTokenizer", "BertTokenizerFast"):
        if cfg.get("tokenizer_class"):
            log.warning("tokenizer_class %s replaced by BertTokenizer (MGeo uses BERT's)",
                        cfg["tokenizer_class"])
        cfg["tokenizer_class"] = "BertTokenizer"
    cfg.setdefault("do_lower_case", True)
    cfg.setdefault("model_max_length", int(raw.get("max_position_embeddings", 512)))
    cfg_path.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    if not tok.is_fast:
        raise ValueError("the tokenizer files do not load as a fast tokenizer")
    tok.save_pretrained(out)
