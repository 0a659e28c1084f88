"""`mgeo score --in FILE --out FILE`: the worker's engine on a CSV/JSONL file, without Kafka.

Rows are validated exactly as Kafka requests are (`mgeo.wire.decode_request`) and answered
with the worker's own encoders (`mgeo.wire.encode_result` / `encode_error`), so a row and a
message give byte-identical results, and the file is written by the writer `mgeo collect`
uses (`mgeo.files.ResultWriter`): the same results make the same file, with the schema
documented in `mgeo.files`. A row the worker would dead-letter (no usable id, not JSON) gets
an error row with an empty id (JSONL: null, plus its `line`), the dead-letter reason as
`error_code` and its line number in `error_message`. The file is streamed in chunks and
renamed into place at the end: a crash never leaves a half-written result that looks complete.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import orjson

from mgeo import wire
from mgeo.files import InputError, ResultWriter, count_rows, detect_format, read_rows
from mgeo.settings import ScoreSettings

_NO_BYTE_LIMIT = 1 << 62  # a file row is not a Kafka message


def run(settings: ScoreSettings) -> int:
    src, dst = Path(settings.input), Path(settings.out)
    try:
        _check_paths(src, dst)
    except (ValueError, InputError) as exc:
        print(f"mgeo score: {exc}", file=sys.stderr)
        return 2
    from mgeo.worker.inference.engine import Engine

    try:
        engine = Engine.from_settings(settings)
    except (ValueError, OSError) as exc:
        print(f"mgeo score: cannot load the model: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        counts = score_file(engine, src, dst, max_chars=settings.max_address_chars,
                            chunk=settings.chunk_pairs,
                            progress=settings.progress and sys.stderr.isatty())
    except (ValueError, InputError) as exc:
        print(f"mgeo score: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.close()
    seconds = time.perf_counter() - started
    print(f"scored {counts['scored']} pairs, {counts['errors']} error rows, in {seconds:.1f} s "
          f"({counts['scored'] / max(seconds, 1e-9):.0f} pairs/s) -> {dst}", file=sys.stderr)
    return 0


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise ValueError(f"input file {src} does not exist")
    detect_format(str(src))
    detect_format(str(dst))
    if dst.is_dir():
        raise ValueError(f"--out {dst} is a directory; name a .csv or .jsonl file")
    if src.resolve() == dst.resolve() or (dst.exists() and os.path.samefile(src, dst)):
        raise ValueError(f"--out {dst} is the input file; write the results elsewhere")


def decode_rows(src: Path, max_chars: int) -> Iterator[tuple[int, wire.Decoded]]:
    """Each row of `src` with its line number, classified as the worker classifies a message."""
    for row in read_rows(src):
        if row.obj is None:
            yield row.line, wire.DeadLetter(row.reason or "bad_row", row.problem or "unreadable")
        else:
            yield row.line, wire.decode_request(orjson.dumps(row.obj), max_bytes=_NO_BYTE_LIMIT,
                                                max_chars=max_chars)


def answers(engine, rows: Iterable[tuple[int, wire.Decoded]], chunk: int = 4096
            ) -> Iterator[tuple[bool, bytes]]:
    """(scored?, result value) for each row, in order: the values the worker would publish."""
    model = engine.model_name
    for part in _chunks(rows, chunk):
        requests = [d for _, d in part if isinstance(d, wire.Request)]
        scored = iter(engine.score([(r.addr1, r.addr2) for r in requests]))
        for line, d in part:
            if isinstance(d, wire.Request):
                s = next(scored)
                yield True, wire.encode_result(d.id, s.probs, engine.positive, model,
                                               s.truncated, d.meta, d.has_meta)
            elif isinstance(d, wire.Invalid):
                yield False, wire.encode_error(d.id, d.code, d.message, model, d.meta,
                                               d.has_meta)
            else:  # the worker dead-letters these; a file row says where it is
                yield False, orjson.dumps({"id": None, "error": {
                    "code": d.reason, "message": f"line {line}: {d.detail}"}, "model": model,
                    "line": line})


def score_file(engine, src: Path, dst: Path, *, max_chars: int = 1000, chunk: int = 4096,
               progress: bool = False) -> dict:
    """Score every row of `src` into `dst`; returns counts of scored and error rows."""
    from tqdm import tqdm

    counts = {"scored": 0, "errors": 0}
    total = count_rows(src) if progress else None
    with ResultWriter(dst, engine.labels, refuse=[src]) as out, \
            tqdm(total=total, unit=" pairs", desc="scored", disable=not progress,
                 file=sys.stderr) as bar:
        for ok, value in answers(engine, decode_rows(src, max_chars), chunk):
            out.write(value)
            counts["scored" if ok else "errors"] += 1
            bar.update(1)
    return counts


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while part := list(islice(it, size)):
        yield part
