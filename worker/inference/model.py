"""Finding, building and loading sequence-classification models from local directories only.

Models are read from disk, never fetched from a hub and never unpickled as arbitrary code: the
worker runs without internet access and model directories may come from anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path

from mgeo.wire import MGEO_LABELS

log = logging.getLogger(__name__)

def default_model_dir() -> Path:
    """The bundled demonstration model (see its README.md), shipped inside this package."""
    bundled = Path(__file__).resolve().parent / "default_model"
    if not (bundled / "model.safetensors").is_file():
        raise ValueError(f"the bundled model is missing from {bundled} (a broken install?); "
                         "reinstall mgeo-stream, or pass --model DIR")
    return bundled


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """Hide transformers' per-file progress bars, which would litter worker logs."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _is_modelscope(path: Path) -> bool:
    """An MGeo checkpoint in ModelScope's layout: its config has MGeo's GIS/fusion fields."""
    import json

    if not (path / "configuration.json").is_file():
        return False
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("fusion_layer" in config or "gis_encoder" in config)


def _explain_not_hf(path: Path) -> str:
    if (path / "configuration.json").is_file():
        return (f"{path} looks like a ModelScope checkpoint, which this worker cannot load "
                f"directly; convert it once with `mgeo convert {path} DST` and pass "
                "--model DST")
    return (f"{path} is not a Hugging Face model directory (no config.json); pass a directory "
            "saved by save_pretrained, or convert a ModelScope checkpoint with "
            "`mgeo convert SRC DST`")


def check_model_dir(path) -> Path:
    """`path` as a model directory, or ValueError saying what it is instead; reads no weights
    and imports no torch, so a command can check its --model before any work."""
    path = Path(path).expanduser()
    if path.is_file():
        raise ValueError(f"--model {path} is a file; pass the model's directory (the one "
                         "holding config.json), or leave --model out for the bundled model")
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist; pass --model DIR "
                         "(a Hugging Face directory) or leave it out for the bundled model")
    if not (path / "config.json").is_file() or _is_modelscope(path):
        raise ValueError(_explain_not_hf(path))
    return path


def mgeo_labels(path, label_map: Mapping[str, str] | None = None) -> dict[int, str]:
    """id2label of the model in `path` with MGeo's names (after `label_map`, which renames the
    model's labels), or ValueError naming the labels it has and what to pass. Reads only its
    config.json: a model scoring under other labels would give every pair a meaningless score
    (LABEL_0/LABEL_1/LABEL_2 read as no exact_match at all)."""
    path = check_model_dir(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}/config.json: {exc}") from None
    raw = config.get("id2label") or {}
    n = int(config.get("num_labels") or len(raw) or 2)
    id2label = {int(k): str(v) for k, v in raw.items()} or {i: f"LABEL_{i}" for i in range(n)}
    label_map = dict(label_map or {})
    has = ", ".join(id2label[i] for i in sorted(id2label))
    unknown = [k for k in label_map if k not in id2label.values()]
    if unknown:
        raise ValueError(f"--label-map names {', '.join(unknown)}, which the model in {path} "
                         f"does not have; its labels are {has}")
    renamed = {i: label_map.get(lab, lab) for i, lab in id2label.items()}
    if sorted(renamed.values()) == sorted(MGEO_LABELS):
        return renamed
    if len(id2label) != len(MGEO_LABELS):
        raise ValueError(f"the model in {path} has {len(id2label)} labels ({has}); MGeo's "
                         f"three are {', '.join(MGEO_LABELS)}: pass an MGeo model")
    suggest = ",".join(f"{id2label[i]}={MGEO_LABELS[i]}" for i in sorted(id2label))
    mapped = f" (after --label-map: {', '.join(renamed[i] for i in sorted(renamed))})" \
        if label_map else ""
    raise ValueError(f"the model in {path} has the labels {has}{mapped}, not MGeo's "
                     f"{', '.join(MGEO_LABELS)}; pass --label-map with the names its "
                     f"training used, e.g. --label-map {suggest} (MGeo's id order)")


def load_model(path, *, label_map: Mapping[str, str] | None = None, mgeo: bool = False):
    """(tokenizer, model, id2label) from a local Hugging Face directory, on the CPU, in eval mode.

    With `mgeo`, the labels must be MGeo's three after `label_map` (see `mgeo_labels`), checked
    before any weight is read, and id2label carries MGeo's names. Safetensors are preferred; a
    lone pytorch_model.bin is read with `weights_only=True`, so a malicious pickle cannot run
    code. Remote code is never trusted.
    """
    path = check_model_dir(path)
    wanted = mgeo_labels(path, label_map) if mgeo else None
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    has_safetensors = any(path.glob("*.safetensors"))
    has_bin = (path / "pytorch_model.bin").is_file()
    if not has_safetensors and not has_bin:
        raise ValueError(f"{path} has a config.json but no weights (model.safetensors or "
                         "pytorch_model.bin)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the tokenizer of {path}: {exc}; the directory needs "
                         "vocab.txt and tokenizer_config.json (or tokenizer.json)") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"the tokenizer of {path} is not a fast (Rust) tokenizer; add a "
                         "tokenizer.json or a BertTokenizer tokenizer_config.json")
    try:
        with quiet_progress():
            if has_safetensors:
                model = AutoModelForSequenceClassification.from_pretrained(
                    path, use_safetensors=True, local_files_only=True, trust_remote_code=False,
                    attn_implementation="sdpa")
            else:
                model = _load_bin(path, AutoConfig.from_pretrained(
                    path, local_files_only=True, trust_remote_code=False))
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # (a damaged file: the last)
        raise ValueError(f"cannot load a sequence-classification model from {path}: {exc}") \
            from exc
    model.eval()
    id2label = _label_ids(path, model.config.id2label, model.config.num_labels)
    return tokenizer, model, wanted or id2label


def load_serving(path, *, label_map: Mapping[str, str] | None = None, mgeo: bool = False):
    """What `load_model` returns, for serving: a plain BERT classifier with model.safetensors
    and tokenizer.json (MGeo, the bundled model, what `mgeo convert` writes) is read without
    importing `transformers` (`bert.py`: half a worker's start-up CPU); any other directory
    through `transformers`, as `load_model`."""
    path = check_model_dir(path)
    wanted = mgeo_labels(path, label_map) if mgeo else None
    from mgeo.worker.inference.bert import RustTokenizer, load_bert

    tokenizer = RustTokenizer.load(path)
    model = load_bert(path) if not isinstance(tokenizer, str) else tokenizer
    if isinstance(model, str):
        log.info("loading %s through transformers: %s", path, model)
        return load_model(path, label_map=label_map, mgeo=mgeo)
    id2label = _label_ids(path, model.config.id2label, model.config.num_labels)
    return tokenizer, model, wanted or id2label


def _label_ids(path: Path, id2label: Mapping, num_labels: int) -> dict[int, str]:
    """The loaded model's id2label as {int: str}, or ValueError if it does not name exactly
    the labels 0..num_labels-1."""
    labels = {int(k): str(v) for k, v in id2label.items()}
    if sorted(labels) != list(range(num_labels)):
        raise ValueError(f"{path}/config.json: id2label {labels} does not name labels "
                         f"0..{num_labels - 1}; fix id2label there")
    return labels


def _load_bin(path: Path, config):
    """Build the model from its config and fill it from pytorch_model.bin, tensors only."""
    import torch
    from transformers import AutoModelForSequenceClassification

    state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation="sdpa")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"pytorch_model.bin lacks {len(missing)} weights, e.g. {missing[:3]}; "
                         "if this is a ModelScope checkpoint, run `mgeo convert SRC DST`")
    if unexpected:
        log.warning("ignored %d unexpected weights in %s, e.g. %s", len(unexpected), path,
                    unexpected[:3])
    return model
