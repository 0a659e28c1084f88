"""Random BERT models for tests and benchmarks, built offline and cached.

Real MGeo weights cannot be downloaded here, and compute cost does not depend on weight values,
so a random BERT of MGeo's shape (12 layers, hidden 768, 12 heads) with the character tokenizer
is an honest stand-in for speed; smaller shapes make fast tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

from mgeo.writers import atomic_directory
from mgeo.wire import MGEO_LABELS



def cache_dir() -> Path:
    """Where built models are kept: $MGEO_CACHE_DIR, else ~/.cache/mgeo."""
    env = os.environ.get("MGEO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mgeo"


def cached_model(name: str, build: Callable[[Path], object]) -> Path:
    """`cache_dir()/name`, made by `build(tmp_dir)` on first use and put in place whole, so
    concurrent runs never see a half-written model (the loser of a race discards its copy)."""
    target = cache_dir() / name
    if not (target / "model.safetensors").is_file():
        with atomic_directory(target, replace=False) as tmp:
            build(tmp)
    return target


def build_random_model(out_dir, *, layers: int = 12, hidden: int = 768, heads: int = 12,
                       intermediate: int | None = None, labels: Sequence[str] = MGEO_LABELS,
                       seed: int = 0, max_position: int = 512) -> Path:
    """A randomly initialised BertForSequenceClassification with the character tokenizer,
    saved as safetensors; the same seed gives the same weights."""
    import torch
    from transformers import BertForSequenceClassification

    from mgeo.training.vocab import char_bert
    from mgeo.worker.inference.model import quiet_progress

    out = Path(out_dir)
    _, config = char_bert(out, layers=layers, hidden=hidden, heads=heads,
                          intermediate=intermediate, labels=labels, max_length=max_position,
                          max_position=max_position)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertForSequenceClassification(config).eval()
    with quiet_progress():
        model.save_pretrained(out)
    return out


def bert_base(seed: int = 0) -> tuple[Path, str]:
    """A cached random BERT-base (MGeo's shape) and a description of it."""
    name = f"bench-bert-base-seed{seed}-v1"
    path = cached_model(name, lambda out: build_random_model(out, seed=seed))
    return path, ("random BERT-base (12 layers, hidden 768, 12 heads, char vocab 21,209), "
                  f"cached at {path}")


def nearly_free(seed: int = 0) -> tuple[Path, str]:
    """A cached BERT with no transformer layer (embeddings, pooler and classifier, hidden 16)
    and the same tokenizer: the engine's code path is the real one and its compute is
    negligible, so what is measured with it is the host path (tokenizing, Kafka, encoding).
    One layer was not negligible: its attention over every token pair cost ~17 us a pair on
    the 2-core CI machine, four times what tokenizing costs there."""
    name = f"bench-nearly-free-seed{seed}-v2"
    path = cached_model(name, lambda out: build_random_model(
        out, layers=0, hidden=16, heads=1, intermediate=16, seed=seed))
    return path, (f"nearly free BERT (no layer: embeddings, pooler, classifier; hidden 16), "
                  f"cached at {path}")
