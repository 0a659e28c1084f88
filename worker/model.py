"""Finding, building and loading sequence-classification models from local directories only.

Models are read from disk, never fetched from a hub and never unpickled as arbitrary code: the
worker runs without internet access and model directories may come from anywhere.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_LABELS = ("not_match", "partial_match", "exact_match")
# Shape of the stand-in model used while no trained default model is bundled.
_FALLBACK = {"layers": 2, "hidden": 128, "heads": 2, "intermediate": 512}
_FALLBACK_NAME = "random-bert-l2-h128-v1"


def bundled_model_dir() -> Path:
    return Path(__file__).resolve().parent / "default_model"


def cache_dir() -> Path:
    """Where built models are kept: $MGEO_CACHE_DIR, else ~/.cache/mgeo."""
    env = os.environ.get("MGEO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mgeo"


def default_model_dir() -> Path:
    """The bundled model if it holds weights; else a small random BERT, built once and cached.

    The random model lets the pipeline run end to end before a trained model exists; its
    scores mean nothing, which is logged.
    """
    bundled = bundled_model_dir()
    if (bundled / "model.safetensors").is_file():
        return bundled
    log.warning("no trained model in %s: using a small RANDOM model (scores are meaningless); "
                "pass --model DIR for real scores", bundled)
    return cached_model(_FALLBACK_NAME, lambda out: build_random_model(out, **_FALLBACK))


def cached_model(name: str, build) -> Path:
    """`cache_dir()/name`, made by `build(tmp_dir)` on first use.

    Built in a temporary directory beside the target and renamed into place, so concurrent
    workers never see a half-written model; the loser of a race discards its copy.
    """
    target = cache_dir() / name
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_random_model(out_dir, *, layers: int = 12, hidden: int = 768, heads: int = 12,
                       intermediate: int = 3072, labels: Sequence[str] = DEFAULT_LABELS,
                       seed: int = 0, max_position: int = 512) -> Path:
    """A randomly initialised BertForSequenceClassification with the char tokenizer.

    Deterministic for a given seed; saved as safetensors. Tests and benchmarks use it in place
    of the real MGeo weights, which cannot be downloaded here.
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from worker.tokenizer import build_char_tokenizer

    out = Path(out_dir)
    tok = build_char_tokenizer(out, max_length=max_position)
    config = BertConfig(
        vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=intermediate,
        max_position_embeddings=max_position, type_vocab_size=2,
        num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
    with quiet_progress():
        model.save_pretrained(out)
    return out


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


def load_model(path):
    """(tokenizer, model, id2label) from a local Hugging Face directory, on the CPU, in eval mode.

    Safetensors are preferred; a lone pytorch_model.bin is read with `weights_only=True`, so a
    malicious pickle cannot run code. Remote code is never trusted.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path).expanduser()
    if not path.is_dir():
        raise ValueError(f"model directory {path} does not exist; pass --model DIR "
                         "(a Hugging Face directory) or leave it out for the bundled model")
    if not (path / "config.json").is_file() or _is_modelscope(path):
        raise ValueError(_explain_not_hf(path))
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
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"cannot load a sequence-classification model from {path}: {exc}") \
            from exc
    model.eval()
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    if sorted(id2label) != list(range(model.config.num_labels)):
        raise ValueError(f"{path}/config.json: id2label {id2label} does not name labels "
                         f"0..{model.config.num_labels - 1}; fix id2label there")
    return tokenizer, model, id2label


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
