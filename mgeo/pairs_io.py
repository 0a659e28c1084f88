"""Reading address pairs from CSV/JSONL and writing results to CSV/JSONL.

CSV input has a header with at least `id,addr1,addr2`; every other column goes to `meta`.
JSONL input has one request object a line (the wire format's request shape).
Writers go through a temporary file renamed into place, so a crash never leaves half a file
where a finished one was expected, and they never write over the input they read.
"""

from __future__ import annotations

import csv
import io
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import orjson

REQUIRED = ("id", "addr1", "addr2")


class InputError(ValueError):
    """Bad input the user must fix; the message says where and what."""


@dataclass(slots=True)
class Row:
    line: int
    obj: dict[str, Any] | None  # None when the line could not be read
    problem: str | None = None


def detect_format(name: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    lower = name.lower()
    if lower.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if lower.endswith((".csv", ".tsv")):
        return "csv"
    raise InputError(f"cannot tell the format of {name!r} from its extension; "
                     "use .csv or .jsonl, or pass --format csv|jsonl")


def _open_text(source: str) -> io.TextIOBase:
    if source == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8-sig", newline="")
    try:
        return open(source, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise InputError(f"cannot open {source}: {exc.strerror}") from None


def _sniff(fh: io.TextIOBase) -> tuple[str, Iterable[str]]:
    first = fh.readline()
    fmt = "jsonl" if first.lstrip().startswith("{") else "csv"
    return fmt, _chain([first], fh)


def _chain(head: list[str], rest: Iterable[str]) -> Iterator[str]:
    yield from head
    yield from rest


def read_rows(source: str | Path, fmt: str = "auto") -> Iterator[Row]:
    """Rows of a pair file, in order, each with its line number; unreadable lines say why."""
    source = str(source)
    fh = _open_text(source)
    with fh:
        if source == "-" and fmt == "auto":
            fmt, lines = _sniff(fh)
        else:
            fmt, lines = detect_format(source, fmt), fh
        if fmt == "jsonl":
            yield from _jsonl_rows(lines)
        else:
            yield from _csv_rows(lines, source)


def _jsonl_rows(lines: Iterable[str]) -> Iterator[Row]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield Row(n, None, f"not JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield Row(n, None, "not a JSON object")
            continue
        yield Row(n, obj)


def _csv_rows(lines: Iterable[str], source: str) -> Iterator[Row]:
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(f"{source}: the CSV header lacks {', '.join(missing)} "
                         f"(found: {', '.join(header)}); the first line must name the columns "
                         "id,addr1,addr2")
    extra = [h for h in header if h not in REQUIRED]
    for values in reader:
        n = reader.line_num
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            yield Row(n, None, f"{len(values)} fields, the header has {len(header)}")
            continue
        rec = dict(zip(header, values))
        obj: dict[str, Any] = {k: rec[k] for k in REQUIRED}
        if extra:
            obj["meta"] = {k: rec[k] for k in extra}
        yield Row(n, obj)


class AtomicWriter:
    """A text file written under a temporary name and renamed into place on success."""

    def __init__(self, path: Path, refuse: Iterable[Path] = ()):
        self.path = Path(path)
        target = self.path.resolve()
        for other in refuse:
            if other is not None and str(other) != "-" and Path(other).resolve() == target:
                raise InputError(f"{path} is also the input; choose another output file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        self.tmp = Path(tmp)
        self.fh = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.fh.close()
        self.tmp.unlink(missing_ok=True)


def result_columns(labels: Iterable[str]) -> list[str]:
    return (["id", "label", "score"] + [f"prob_{lab}" for lab in labels]
            + ["truncated", "error_code", "error_message", "model", "meta"])


def result_row(res: dict[str, Any]) -> dict[str, Any]:
    """A result object flattened for CSV (per-label probability columns, meta as JSON)."""
    row: dict[str, Any] = {"id": res.get("id"), "label": res.get("label", ""),
                           "score": _fmt(res.get("score")), "truncated": res.get("truncated", ""),
                           "model": res.get("model", "")}
    for lab, p in (res.get("probs") or {}).items():
        row[f"prob_{lab}"] = _fmt(p)
    err = res.get("error") or {}
    row["error_code"] = err.get("code", "")
    row["error_message"] = err.get("message", "")
    row["meta"] = orjson.dumps(res["meta"]).decode() if "meta" in res else ""
    return row


def _fmt(x: Any) -> Any:
    return f"{x:.6f}" if isinstance(x, float) else ("" if x is None else x)


def write_results(path: Path, results: Iterable[dict[str, Any]], labels: list[str],
                  refuse: Iterable[Path] = ()) -> int:
    """Write result objects to `path` (.csv or .jsonl); returns the number of rows."""
    fmt = detect_format(str(path))
    out = AtomicWriter(path, refuse)
    n = 0
    try:
        if fmt == "jsonl":
            for res in results:
                out.fh.write(orjson.dumps(res).decode() + "\n")
                n += 1
        else:
            writer = csv.DictWriter(out.fh, fieldnames=result_columns(labels),
                                    extrasaction="ignore")
            writer.writeheader()
            for res in results:
                writer.writerow(result_row(res))
                n += 1
    except BaseException:
        out.abort()
        raise
    out.commit()
    return n
