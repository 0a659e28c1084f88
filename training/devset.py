"""The hand-written development set: realistic address pairs, each label argued by the rules of
`training/LABELLING.md`, for evaluation only (never trained on, never used to pick pairs).

`training/data/dev_pairs.csv` has the columns id,addr1,addr2,label,why; `why` starts with the
rule tag (E1-E7, P1-P5, N1-N6) that decides the label, so results can be sliced by rule.
`mgeo train` scores every model it trains on this set when the file is installed.
"""

from __future__ import annotations

import csv
import importlib.resources
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("id", "addr1", "addr2", "label", "why")
_TAG = re.compile(r"^\s*([EPN][0-7])")


def dev_set_path() -> Path | None:
    """The installed development set, or None when this installation lacks it."""
    try:
        path = Path(str(importlib.resources.files("mgeo.training") / "data" / "dev_pairs.csv"))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - a broken installation
        return None
    return path if path.is_file() else None


def read_dev_set(path: Path) -> list[dict[str, str]]:
    """Rows of the development set, each with its rule `tag`; a malformed file is an error."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path}: expected the columns {','.join(COLUMNS)}, got "
                             f"{reader.fieldnames}")
        rows = []
        for line, row in enumerate(reader, start=2):
            tag = _TAG.match(row["why"] or "")
            if not (row["addr1"] and row["addr2"] and row["label"] and tag):
                raise ValueError(f"{path}:{line}: needs addr1, addr2, label and a why that "
                                 "starts with a rule tag (E1-E7, P1-P5, N1-N6)")
            rows.append({**row, "tag": tag.group(1)})
    return rows


def confusion(gold: Sequence[str], pred: Sequence[str],
              labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """counts[gold label][predicted label]."""
    out = {g: {p: 0 for p in labels} for g in labels}
    for g, p in zip(gold, pred):
        out[g][p] += 1
    return out


def by_tag(rows: Sequence[dict], pred: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per rule tag: how many pairs, how many the model labels right (the tag's recall)."""
    out: dict[str, dict[str, Any]] = {}
    for row, p in zip(rows, pred):
        slot = out.setdefault(row["tag"], {"label": row["label"], "n": 0, "correct": 0})
        slot["n"] += 1
        slot["correct"] += int(p == row["label"])
    order = {"E": 0, "P": 1, "N": 2}
    return {k: {**v, "recall": v["correct"] / v["n"]}
            for k, v in sorted(out.items(), key=lambda kv: (order[kv[0][0]], kv[0]))}
