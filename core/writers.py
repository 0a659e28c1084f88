"""Writing files whole or not at all, readable by others: result files and built directories.

Every file is written under a temporary name in its own folder and renamed into place once
complete (after an fsync), so a crash, an error or Ctrl-C never leaves half a file where a
finished one was expected, and an existing file is replaced only by a finished one. Files get
the permissions the umask gives (0644 under the usual 022), as `open()` would give them, not
mkstemp's private 0600: a downstream service running as another user can read them.

Result files follow the schema in `mgeo.wire` (`result_columns`, `result_row`); the format is
the extension of the path, exactly: .csv, .tsv, .jsonl (or .ndjson), .xlsx (the `excel` extra,
written with openpyxl's write-only mode, which streams rows to disk).
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from mgeo.readers import EXCEL_MAX_ROWS, InputError, require_openpyxl
from mgeo.wire import result_columns, result_line, result_row

OUTPUT_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl",
                  ".xlsx": "xlsx"}


class OutputError(InputError):
    """An output file that cannot be written where the user asked; the message says why."""


def umask() -> int:
    """This process's umask, read without changing it (os.umask alone must set one, which
    races with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def output_format(path: str | os.PathLike) -> str:
    """The format of result file `path`, from its extension exactly; OutputError saying why not
    for any other."""
    suffix = Path(path).suffix.lower()
    if suffix in OUTPUT_FORMATS:
        return OUTPUT_FORMATS[suffix]
    if suffix == ".json":
        why = "results are JSON Lines, one object a line, not one JSON document: name it .jsonl"
    elif suffix == ".xls":
        why = "old binary Excel files are not written: name it .xlsx"
    else:
        why = "name it .csv, .tsv, .jsonl or .xlsx"
    raise OutputError(f"--out {path}: cannot tell which format to write from "
                      f"{suffix or 'a name without an extension'}; {why}")


def check_writable(path: str | os.PathLike, what: str = "--out") -> None:
    """OutputError naming `path` unless a file can be created there now: not a folder, not under
    a file, in a folder this process may write (tried, not guessed: ACLs, read-only mounts and
    root all answer truthfully). Missing folders are created by the writer later."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; name a file in it")
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputError(f"{what} {path}: {parent} is a file, not a folder")
    if parent != path.parent:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise OutputError(f"{what} {path}: cannot create folders in {parent} (permission "
                              "denied); choose a folder you can write to")
        return
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", dir=parent)
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot write in {parent} ({exc.strerror}); choose a "
                          "folder you can write to") from None
    os.close(fd)
    os.unlink(probe)


def check_output(path: str | os.PathLike, refuse: Iterable[Any] = (),
                 rows: int | None = None) -> str:
    """Everything about result file `path` that can be known before any work: its format, that
    it is not an input in `refuse`, that it can be written, that `rows` results fit the format.
    Returns the format."""
    if Path(path).is_dir():
        raise OutputError(f"--out {path} is a folder; name a file in it")
    fmt = output_format(path)
    _refuse_inputs(Path(path), refuse)
    check_writable(path)
    if fmt == "xlsx":
        require_openpyxl(f"writing {path}")
        if rows is not None and rows >= EXCEL_MAX_ROWS:
            raise OutputError(f"--out {path}: {rows:,} results do not fit an Excel sheet (at "
                              f"most {EXCEL_MAX_ROWS - 1:,} rows under the header); write "
                              ".csv or .jsonl")
    return fmt


def _refuse_inputs(path: Path, refuse: Iterable[Any]) -> None:
    target = path.resolve()
    for other in refuse:
        if other is None or str(other) == "-":
            continue
        other = Path(other)
        if other.resolve() == target or (path.exists() and other.exists()
                                         and os.path.samefile(other, path)):
            raise OutputError(f"--out {path} is also the input; write the results elsewhere")


class AtomicWriter:
    """A file written under a temporary name in its folder and renamed into place by
    `commit()`; `abort()` removes it. `fh` is text (UTF-8) or, with `binary`, bytes."""

    def __init__(self, path: str | os.PathLike, refuse: Iterable[Any] = (),
                 binary: bool = False):
        self.path = Path(path)
        _refuse_inputs(self.path, refuse)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None
        self.tmp = Path(tmp)
        os.fchmod(fd, 0o666 & ~umask())  # what open() would have given, not mkstemp's 0600
        self.fh: IO = (os.fdopen(fd, "wb") if binary
                       else os.fdopen(fd, "w", encoding="utf-8", newline=""))

    def commit(self) -> None:
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror}; it was left as it "
                              "was") from None

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


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
    mask = umask()
    src.chmod(0o777 & ~mask)  # mkdtemp made it private; a finished directory is not
    for f in src.rglob("*"):
        f.chmod((0o777 if f.is_dir() else 0o666) & ~mask)
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


# -- result files ------------------------------------------------------------------------------


class _Table:
    """CSV or TSV rows of the result schema."""

    def __init__(self, fh: IO[str], columns: list[str], delimiter: str):
        self._w = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore", restval="",
                                 delimiter=delimiter)
        self._w.writeheader()

    def write(self, res: dict[str, Any]) -> None:
        self._w.writerow(result_row(res))

    def close(self) -> None:
        pass


class _Sheet:
    """An .xlsx sheet of the result schema, rows streamed to disk by openpyxl's write-only
    mode; numbers as numbers and `truncated` as a boolean."""

    def __init__(self, fh: IO[bytes], columns: list[str], path: Path):
        openpyxl = require_openpyxl(f"writing {path}")
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

        self._illegal = ILLEGAL_CHARACTERS_RE
        self._fh, self._path = fh, path
        self._book = openpyxl.Workbook(write_only=True)
        self._sheet = self._book.create_sheet("results")
        self._columns = columns
        self._numbers = {i for i, c in enumerate(columns) if c == "score" or
                         c.startswith("prob_")}
        self._truncated = columns.index("truncated")
        self._sheet.append(columns)
        self._rows = 1

    def write(self, res: dict[str, Any]) -> None:
        if self._rows >= EXCEL_MAX_ROWS:
            raise OutputError(f"--out {self._path}: more results than an Excel sheet holds "
                              f"({EXCEL_MAX_ROWS - 1:,} under the header); write .csv or .jsonl")
        row = result_row(res)
        cells: list[Any] = []
        for i, col in enumerate(self._columns):
            text = row.get(col, "")
            if text and i in self._numbers:
                cells.append(float(text))
            elif text and i == self._truncated:
                cells.append(text == "true")
            else:  # control characters are not allowed in a sheet's XML
                cells.append(self._illegal.sub("\ufffd", text) if text else None)
        self._sheet.append(cells)
        self._rows += 1

    def close(self) -> None:
        self._book.save(self._fh)


class _Lines:
    """JSONL: each result value as the worker publishes it."""

    def __init__(self, fh: IO[str]):
        self._fh = fh

    def write(self, res: dict[str, Any] | bytes) -> None:
        self._fh.write(result_line(res) + "\n")

    def close(self) -> None:
        pass


class ResultWriter:
    """Writes result objects (dicts, or the wire's bytes) to a .csv, .tsv, .jsonl or .xlsx
    file, one at a time, under a temporary name renamed into place by `commit()`; as a context
    manager it commits on success and removes the temporary file on an exception."""

    def __init__(self, path: str | os.PathLike, labels: Iterable[str],
                 refuse: Iterable[Any] = (), fmt: str = "auto"):
        self.path = Path(path)
        self.format = output_format(self.path) if fmt == "auto" else fmt
        self.n = 0
        self._out = AtomicWriter(self.path, refuse, binary=self.format == "xlsx")
        try:
            columns = result_columns(labels)
            if self.format == "jsonl":
                self._sink: Any = _Lines(self._out.fh)
            elif self.format == "xlsx":
                self._sink = _Sheet(self._out.fh, columns, self.path)
            else:
                self._sink = _Table(self._out.fh, columns, "\t" if self.format == "tsv" else ",")
        except BaseException:
            self._out.abort()
            raise

    def write(self, res: dict[str, Any] | bytes) -> None:
        if isinstance(res, bytes) and self.format != "jsonl":
            res = orjson.loads(res)
        try:
            self._sink.write(res)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None
        self.n += 1

    def commit(self) -> None:
        try:
            self._sink.close()
        except OSError as exc:
            self._out.abort()
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from None
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


def write_results(path: str | os.PathLike, results: Iterable[dict[str, Any] | bytes],
                  labels: list[str], refuse: Iterable[Any] = ()) -> int:
    """Write result objects to `path` (its extension picks the format); returns the number of
    rows."""
    with ResultWriter(path, labels, refuse) as out:
        for res in results:
            out.write(res)
    return out.n
