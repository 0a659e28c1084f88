"""Reading address pairs from CSV/JSONL and writing results to CSV/JSONL.

CSV input has a header with at least `id,addr1,addr2`; every other column goes to `meta`.
JSONL input has one request object a line (the wire format's request shape).

Every result file (`mgeo score`, `mgeo collect`, `mgeo demo`) is written by `ResultWriter`, so
identical results give identical files:

- JSONL: one result object a line, exactly as the worker publishes it (`mgeo.wire`).
- CSV: the columns `RESULT_COLUMNS_HEAD`, one `prob_<label>` per label of the model (in the
  model's label order), then `RESULT_COLUMNS_TAIL`:

  ``id, label, score, prob_<label>..., truncated, error_code, error_message, model, meta``

  Numbers are written as JSON writes them (shortest text that reads back the same float),
  `truncated` as `true`/`false`; the columns a row does not have are empty (an error row has
  no label, score, probabilities or truncated; a scored row no error). `meta` holds the
  request's metadata as one JSON value (empty when the request sent none), so no metadata
  key, an input column named `label` say, can ever clash with a result column.

Writers go through a temporary file renamed into place, so a crash never leaves half a file
where a finished one was expected, and they never write over the input they read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
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
    reason: str | None = None  # with `problem`: not_json, not_object or bad_row


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
            yield Row(n, None, f"not JSON: {exc}", "not_json")
            continue
        if not isinstance(obj, dict):
            yield Row(n, None, "not a JSON object", "not_object")
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
            yield Row(n, None, f"{len(values)} fields, the header has {len(header)}",
                      "bad_row")
            continue
        rec = dict(zip(header, values))
        obj: dict[str, Any] = {k: rec[k] for k in REQUIRED}
        if extra:
            obj["meta"] = {k: rec[k] for k in extra}
        yield Row(n, obj)


@contextlib.contextmanager
def atomic_directory(dst: Path, *, replace: bool = True) -> Iterator[Path]:
    """A directory built under a temporary name beside `dst` and put in its place only when
    the block ends without an exception: readers never see half of it, and a failure (or an
    interrupt) leaves `dst` as it was. With `replace=False`, a `dst` that appeared meanwhile
    (another process built it first) is kept and this copy discarded."""
    dst = Path(dst).expanduser()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp
        _put_in_place(tmp, dst, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _put_in_place(src: Path, dst: Path, replace: bool) -> None:
    umask = os.umask(0)
    os.umask(umask)
    src.chmod(0o777 & ~umask)  # mkdtemp made it private; a finished directory is not
    for f in src.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~umask)
    old = None
    if dst.exists():
        if not replace:
            return
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        dst.rename(old)
    try:
        src.rename(dst)
    except OSError:
        if old is not None:
            old.rename(dst)  # put the previous one back rather than leave none
        elif not replace and dst.exists():
            return  # lost a race to another builder: theirs is as good
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def count_rows(source: str | Path, fmt: str = "auto") -> int | None:
    """How many rows `source` holds (what `read_rows` reads, unreadable ones included), from a
    quick pass over the file, for progress bars; None for stdin."""
    source = str(source)
    if source == "-":
        return None
    fmt = detect_format(source, fmt)
    try:
        if fmt == "jsonl":
            with open(source, "rb") as fh:
                return sum(1 for line in fh if line.strip())
        with open(source, encoding="utf-8-sig", newline="") as fh:
            return max(0, sum(1 for values in csv.reader(fh)
                              if any(v.strip() for v in values)) - 1)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


RESULT_COLUMNS_HEAD = ("id", "label", "score")
RESULT_COLUMNS_TAIL = ("truncated", "error_code", "error_message", "model", "meta")


def result_columns(labels: Iterable[str]) -> list[str]:
    """The CSV header of a result file for a model with `labels` (in its id order)."""
    return [*RESULT_COLUMNS_HEAD, *(f"prob_{lab}" for lab in labels), *RESULT_COLUMNS_TAIL]


def result_row(res: dict[str, Any]) -> dict[str, str]:
    """A result object as a CSV row: every value a string, absent ones empty."""
    row = dict.fromkeys((*RESULT_COLUMNS_HEAD, *RESULT_COLUMNS_TAIL), "")
    row["id"] = _text(res.get("id"))
    row["model"] = _text(res.get("model"))
    err = res.get("error")
    if isinstance(err, dict):
        row["error_code"] = _text(err.get("code"))
        row["error_message"] = _text(err.get("message"))
    else:
        row["label"] = _text(res.get("label"))
        row["score"] = _number(res.get("score"))
        if "truncated" in res:
            row["truncated"] = "true" if res["truncated"] else "false"
        for lab, p in (res.get("probs") or {}).items():
            row[f"prob_{lab}"] = _number(p)
    if "meta" in res:
        row["meta"] = orjson.dumps(res["meta"]).decode()
    return row


def result_line(res: dict[str, Any] | bytes) -> str:
    """A result as a JSONL line (no newline): the wire value itself when given bytes."""
    return (res if isinstance(res, bytes) else orjson.dumps(res)).decode()


def _text(x: Any) -> str:
    return "" if x is None else str(x)


def _number(x: Any) -> str:
    if x is None or isinstance(x, bool):
        return ""
    return orjson.dumps(x).decode() if isinstance(x, (int, float)) else str(x)


class ResultWriter:
    """Writes result objects (dicts, or the wire's bytes) to a .csv or .jsonl file, one at a
    time, under a temporary name renamed into place by `commit()`; as a context manager it
    commits on success and removes the temporary file on an exception."""

    def __init__(self, path: Path, labels: Iterable[str], refuse: Iterable[Path] = (),
                 fmt: str = "auto"):
        self.path = Path(path)
        self.format = detect_format(str(path), fmt)
        self.n = 0
        self._out = AtomicWriter(self.path, refuse)
        self._csv = None
        if self.format == "csv":
            self._csv = csv.DictWriter(self._out.fh, fieldnames=result_columns(labels),
                                       extrasaction="ignore", restval="")
            self._csv.writeheader()

    def write(self, res: dict[str, Any] | bytes) -> None:
        if self._csv is None:
            self._out.fh.write(result_line(res) + "\n")
        else:
            self._csv.writerow(result_row(orjson.loads(res) if isinstance(res, bytes) else res))
        self.n += 1

    def commit(self) -> None:
        self._out.commit()

    def abort(self) -> None:
        self._out.abort()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def write_results(path: Path, results: Iterable[dict[str, Any] | bytes], labels: list[str],
                  refuse: Iterable[Path] = ()) -> int:
    """Write result objects to `path` (.csv or .jsonl); returns the number of rows."""
    with ResultWriter(path, labels, refuse) as out:
        for res in results:
            out.write(res)
    return out.n
