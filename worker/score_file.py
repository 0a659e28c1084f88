"""`mgeo score --in FILE --out FILE`: the worker's engine on a CSV/JSONL file, without Kafka.

Rows are validated exactly as Kafka requests are (`mgeo.wire.decode_request`), so a file and
a topic give the same scores and the same error codes. The file is streamed in chunks, and
the output is written to a temporary file renamed into place at the end: a crash never leaves
a half-written result that looks complete.
"""

from __future__ import annotations

import csv
import os
import sys
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import orjson

from mgeo import wire

_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_NO_BYTE_LIMIT = 1 << 62  # a file row is not a Kafka message


def run(settings) -> int:
    src, dst = Path(settings.input), Path(settings.out)
    try:
        src_fmt, dst_fmt = _check_paths(src, dst)
    except ValueError as exc:
        print(f"mgeo score: {exc}", file=sys.stderr)
        return 2
    from worker.engine import Engine

    try:
        engine = Engine.from_settings(settings)
    except ValueError as exc:
        print(f"mgeo score: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        counts = score_file(engine, src, dst, src_fmt, dst_fmt,
                            max_chars=settings.max_address_chars,
                            chunk=getattr(settings, "chunk_pairs", 4096),
                            progress=settings.progress and sys.stderr.isatty())
    except ValueError as exc:
        print(f"mgeo score: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    seconds = time.perf_counter() - started
    print(f"scored {counts['scored']} pairs, {counts['errors']} error rows, in {seconds:.1f} s "
          f"({counts['scored'] / max(seconds, 1e-9):.0f} pairs/s) -> {dst}", file=sys.stderr)
    return 0


def _check_paths(src: Path, dst: Path) -> tuple[str, str]:
    if not src.is_file():
        raise ValueError(f"input file {src} does not exist")
    src_fmt = _FORMATS.get(src.suffix.lower())
    dst_fmt = _FORMATS.get(dst.suffix.lower())
    if src_fmt is None or dst_fmt is None:
        bad = src if src_fmt is None else dst
        raise ValueError(f"{bad}: unknown format; use a .csv or .jsonl file")
    if src.resolve() == dst.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"--out {dst} is the input file; write the results elsewhere")
    if dst.is_dir():
        raise ValueError(f"--out {dst} is a directory; name a .csv or .jsonl file")
    return src_fmt, dst_fmt


def score_file(engine, src: Path, dst: Path, src_fmt: str, dst_fmt: str, *,
               max_chars: int = 1000, chunk: int = 4096, progress: bool = False) -> dict:
    """Score every row of `src` into `dst`; returns counts of scored and error rows."""
    from tqdm import tqdm

    counts = {"scored": 0, "errors": 0}
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    with open(src, "rb" if src_fmt == "jsonl" else "r",
              **({} if src_fmt == "jsonl" else {"encoding": "utf-8-sig", "newline": ""})) as f:
        rows, meta_columns = (_read_jsonl(f, max_chars) if src_fmt == "jsonl"
                              else _read_csv(f, max_chars))
        try:
            with open(tmp, "w", encoding="utf-8", newline="") as out, \
                    tqdm(unit=" pairs", disable=not progress, file=sys.stderr) as bar:
                writer = (_JsonlWriter(out, engine) if dst_fmt == "jsonl"
                          else _CsvWriter(out, engine, meta_columns))
                for part in _chunks(rows, chunk):
                    requests = [d for _, d in part if isinstance(d, wire.Request)]
                    scored = iter(engine.score([(r.addr1, r.addr2) for r in requests]))
                    for line, decoded in part:
                        if isinstance(decoded, wire.Request):
                            writer.result(decoded, next(scored))
                            counts["scored"] += 1
                        else:
                            writer.error(line, decoded)
                            counts["errors"] += 1
                    bar.update(len(part))
            tmp.replace(dst)
        finally:
            tmp.unlink(missing_ok=True)
    return counts


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while part := list(islice(it, size)):
        yield part


def _read_jsonl(f, max_chars: int) -> tuple[Iterator, list[str] | None]:
    def rows():
        for n, raw in enumerate(f, 1):
            if raw.strip():
                yield n, wire.decode_request(raw.strip(), max_bytes=_NO_BYTE_LIMIT,
                                             max_chars=max_chars)
    return rows(), None


def _read_csv(f, max_chars: int) -> tuple[Iterator, list[str]]:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in ("id", "addr1", "addr2") if c not in header]
    if missing:
        raise ValueError(f"the CSV header lacks {', '.join(missing)}; it needs id,addr1,addr2 "
                         "(other columns are kept as meta)")
    meta_columns = [c for c in header if c not in ("id", "addr1", "addr2")]

    def rows():
        for row in reader:
            obj = {"id": row["id"], "addr1": row["addr1"], "addr2": row["addr2"]}
            if meta_columns:
                obj["meta"] = {c: row.get(c) for c in meta_columns}
            yield reader.line_num, wire.decode_request(
                orjson.dumps(obj), max_bytes=_NO_BYTE_LIMIT, max_chars=max_chars)
    return rows(), meta_columns


class _JsonlWriter:
    """One result object a line, exactly as the worker publishes it."""

    def __init__(self, out, engine):
        self.out, self.engine = out, engine

    def result(self, req: wire.Request, scored) -> None:
        self._line(wire.encode_result(req.id, scored.probs, self.engine.positive,
                                      self.engine.model_name, scored.truncated, req.meta,
                                      req.has_meta))

    def error(self, line: int, bad) -> None:
        if isinstance(bad, wire.Invalid):
            value = wire.encode_error(bad.id, bad.code, bad.message, self.engine.model_name,
                                      bad.meta, bad.has_meta)
        else:  # a row without a usable id: say where it is
            value = orjson.dumps({"id": None, "line": line,
                                  "error": {"code": bad.reason, "message": bad.detail},
                                  "model": self.engine.model_name})
        self._line(value)

    def _line(self, value: bytes) -> None:
        self.out.write(value.decode())
        self.out.write("\n")


class _CsvWriter:
    """id, score, label, prob_<label>..., truncated, error, error_message, then the meta."""

    def __init__(self, out, engine, meta_columns: list[str] | None):
        self.engine = engine
        self.meta_columns = meta_columns  # None: JSONL input, meta goes to one JSON column
        self.writer = csv.writer(out)
        tail = meta_columns if meta_columns is not None else ["meta"]
        self.writer.writerow(["id", "score", "label", *(f"prob_{x}" for x in engine.labels),
                              "truncated", "error", "error_message", *tail])

    def result(self, req: wire.Request, scored) -> None:
        probs = scored.probs
        score = min(1.0, max(0.0, sum(probs[p] for p in self.engine.positive)))
        label = max(probs, key=probs.__getitem__)
        self.writer.writerow([req.id, f"{score:.6f}", label,
                              *(f"{probs[x]:.6f}" for x in self.engine.labels),
                              str(scored.truncated).lower(), "", "",
                              *self._meta(req.meta, req.has_meta)])

    def error(self, line: int, bad) -> None:
        blank = [""] * (len(self.engine.labels) + 3)
        if isinstance(bad, wire.Invalid):
            row = [bad.id, *blank, bad.code, bad.message, *self._meta(bad.meta, bad.has_meta)]
        else:
            row = ["", *blank, bad.reason, f"line {line}: {bad.detail}", *self._meta(None, False)]
        self.writer.writerow(row)

    def _meta(self, meta, has_meta: bool) -> list[str]:
        if self.meta_columns is None:
            return [orjson.dumps(meta).decode() if has_meta else ""]
        meta = meta if isinstance(meta, dict) else {}
        return ["" if meta.get(c) is None else str(meta[c]) for c in self.meta_columns]
