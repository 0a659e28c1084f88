"""`mgeo score --in FILE --out FILE`: the worker's engine on a file of pairs, without Kafka.

Input: what `mgeo.readers` reads (CSV, TSV, JSONL, Excel; UTF-8 or GB18030/GBK; recognised or
mapped columns; stdin). Output: what `mgeo.writers` writes, the format following --out's
extension, the schema `mgeo.wire` documents, written whole or not at all.

Everything the user can get wrong is checked before the model loads (a few seconds): the
input's path, format and header, every byte of a text input's encoding (one fast pass, so a bad
byte at line 900,000 shows in a second, not after an hour of scoring), --out's format and that
it can be written, and --model's directory and labels.

Rows are validated exactly as Kafka requests are (`mgeo.wire.decode_request`) and scored by the
worker's own scoring step (`mgeo.worker.stream.scoring.Scorer`), so a row and a message give
byte-identical results, and a pair the model fails on is answered `scoring_failed`, as the
worker answers it, while the rest of the file is scored. A row the worker would dead-letter (no
usable id, not JSON) gets an error row with an empty id (JSONL: null, plus its `line`), the
dead-letter reason as `error_code` and its line number in `error_message`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path

import orjson

from mgeo import wire
from mgeo.readers import InputError, PairReader
from mgeo.settings import ScoreSettings
from mgeo.worker.stream.scoring import EngineFailure, Scorer
from mgeo.writers import OutputError, ResultWriter, check_output

_NO_BYTE_LIMIT = 1 << 62  # a file row is not a Kafka message


def run(settings: ScoreSettings) -> int:
    dst = Path(settings.out)
    try:
        reader = PairReader(settings.input, settings.format, settings.encoding,
                            settings.columns, settings.id_from_row)
    except InputError as exc:
        return _say(f"{exc}", 2)
    with reader:
        try:
            total = reader.count()
            check_output(dst, refuse=[settings.input], rows=total)
            if settings.model is not None:
                from mgeo.worker.inference.model import mgeo_labels

                mgeo_labels(settings.model, settings.label_map)
        except (InputError, ValueError) as exc:
            return _say(f"{exc}", 2)
        from mgeo.worker.inference.engine import Engine

        try:
            engine = Engine.from_settings(settings)
        except (ValueError, OSError) as exc:
            return _say(f"cannot load the model: {exc}", 2)
        started = time.perf_counter()
        try:
            counts = score_rows(engine, reader, dst, max_chars=settings.max_address_chars,
                                chunk=settings.chunk_pairs, total=total,
                                progress=settings.progress and sys.stderr.isatty())
        except OutputError as exc:
            return _say(f"{exc}; nothing written", 1)
        except InputError as exc:
            return _say(f"{exc}; nothing written", 2)
        except EngineFailure as exc:
            return _say(f"{exc}; nothing written", 1)
        finally:
            engine.close()
    seconds = time.perf_counter() - started
    note = (f"; ids are row numbers (row-N: line N of {reader.shown})"
            if settings.id_from_row else "")
    failed = f" ({counts['failed']} the model failed on)" if counts["failed"] else ""
    print(f"scored {counts['scored']} pairs, {counts['errors']} error rows{failed}, in "
          f"{seconds:.1f} s ({counts['scored'] / max(seconds, 1e-9):.0f} pairs/s) -> {dst}; "
          f"{reader.shown} read as {reader.describe()}{note}", file=sys.stderr)
    return 0


def _say(line: str, code: int) -> int:
    print(f"mgeo score: {line}", file=sys.stderr)
    return code


def decode_rows(rows: Iterable, max_chars: int) -> Iterator[tuple[int, wire.Decoded]]:
    """Each row with its line number, classified as the worker classifies a message."""
    for row in rows:
        if row.obj is None:
            yield row.line, wire.DeadLetter(row.reason or "bad_row", row.problem or "unreadable")
        else:
            yield row.line, wire.decode_request(orjson.dumps(row.obj), max_bytes=_NO_BYTE_LIMIT,
                                                max_chars=max_chars)


def answers(engine, rows: Iterable[tuple[int, wire.Decoded]], chunk: int = 4096
            ) -> Iterator[tuple[str, bytes]]:
    """(kind, result value) for each row, in order: the values the worker would publish; kind
    is "scored", "failed" (the model failed on the pair) or "error" (an invalid row)."""
    scorer = Scorer(engine)
    model = scorer.model_name
    for part in _chunks(rows, chunk):
        requests = [d for _, d in part if isinstance(d, wire.Request)]
        job = scorer.run(scorer.prepare(requests))
        values = iter(scorer.encode(job))
        failed = set(job.failed)
        k = 0
        for line, d in part:
            if isinstance(d, wire.Request):
                yield ("failed" if k in failed else "scored"), next(values)
                k += 1
            elif isinstance(d, wire.Invalid):
                yield "error", scorer.error(d)
            else:  # the worker dead-letters these; a file row says where it is
                yield "error", orjson.dumps({"id": None, "error": {
                    "code": d.reason, "message": f"line {line}: {d.detail}"}, "model": model,
                    "line": line})


def score_rows(engine, rows: Iterable, dst: Path, *, max_chars: int = 1000, chunk: int = 4096,
               total: int | None = None, progress: bool = False, refuse=()) -> dict:
    """Score `rows` (a `PairReader`, or any `Row`s) into `dst`; returns counts of scored,
    error and failed rows (failed rows are error rows too)."""
    from tqdm import tqdm

    counts = {"scored": 0, "errors": 0, "failed": 0}
    refuse = [getattr(rows, "name", None), *refuse]
    with ResultWriter(dst, engine.labels, refuse=refuse) as out, \
            tqdm(total=total, unit=" pairs", desc="scored", disable=not progress,
                 file=sys.stderr) as bar:
        for kind, value in answers(engine, decode_rows(rows, max_chars), chunk):
            out.write(value)
            counts["scored" if kind == "scored" else "errors"] += 1
            counts["failed"] += kind == "failed"
            bar.update(1)
    return counts


def score_file(engine, src: Path, dst: Path, *, max_chars: int = 1000, chunk: int = 4096,
               progress: bool = False, **read: object) -> dict:
    """Score every row of file `src` into `dst` (`read`: the `PairReader` options)."""
    with PairReader(src, **read) as reader:
        return score_rows(engine, reader, dst, max_chars=max_chars, chunk=chunk,
                          total=reader.count() if progress else None, progress=progress)


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while part := list(islice(it, size)):
        yield part
