"""Reading address pairs from the files ETL teams hand over, streamed row by row.

Formats: CSV, TSV, JSONL (the wire's request objects) and Excel .xlsx (the first sheet,
streamed by `XlsxSheet` with the standard library's zipfile and expat: no extra needed to read),
by extension or forced; stdin ("-") is sniffed.

Encodings of text files, without options: UTF-8 (with or without a BOM), then GB18030, the
superset of GBK and GB2312 that Chinese Excel and database exports write. Files are read as
bytes a line at a time: a newline byte is a newline in both encodings, so a line is decoded
alone and a bad byte is named with its line. At the first line that is not plain ASCII the
reader looks ahead (up to `LOOKAHEAD` bytes) and picks UTF-8 when at least half of those lines
are valid UTF-8 (GBK text almost never is), else GB18030 when at least half are valid GB18030.
A strict rule and not a statistical detector: it is exact for the two encodings these files
come in, costs one decode per line, and works on a stream; a detector guesses from a sample and
can guess differently from one file to the next. Anything else (Big5, Shift-JIS...) is read
with `--encoding`. A UTF-16 or UTF-32 file with a BOM (Excel's "Unicode text") is read too.

Columns of a table are found by header name: `HEADER_NAMES` lists the names recognised for each
role (English and Chinese, compared ignoring case, spaces, `_`, `-` and full-width forms);
`columns` maps the rest; `id_from_row` makes ids of the row numbers (`row-N`: line N of the
file, the sheet's row N). Every other column goes to the request's `meta`.

Every message names the path as the user typed it.
"""

from __future__ import annotations

import codecs
import csv
import datetime as _dt
import io
import itertools
import os
import posixpath
import re
import shlex
import sys
import tempfile
import unicodedata
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping

import orjson

ROLES = ("id", "addr1", "addr2")
FORMATS = ("csv", "tsv", "jsonl", "xlsx")
# Extension -> input format.
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl",
              ".ndjson": "jsonl", ".json": "jsonl", ".xlsx": "xlsx", ".xlsm": "xlsx"}

# Header names recognised for each role, compared by `header_key`. Documented in
# docs/inputs.md (a test keeps the two the same).
HEADER_NAMES = {
    "id": ("id", "pair_id", "key", "编号", "序号", "id号", "标识"),
    "addr1": ("addr1", "address1", "addr_a", "address_a", "source_address", "地址1", "地址一",
              "地址A", "源地址", "原地址", "原始地址"),
    "addr2": ("addr2", "address2", "addr_b", "address_b", "target_address", "地址2", "地址二",
              "地址B", "目标地址", "对比地址", "标准地址"),
}

ROW_ID = "row-{}"  # the id of line N with --id-from-row
LOOKAHEAD = 1 << 20  # bytes read ahead to choose between UTF-8 and GB18030
EXCEL_MAX_ROWS = 1_048_576

_GB18030_BOM = b"\x84\x31\x95\x33"
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_ZIP = b"PK\x03\x04"
# Where str.splitlines would break a line that a newline byte does not end.
_SEPARATORS = re.compile("[\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_LONE_CR = re.compile("\r(?!\n)")


class InputError(ValueError):
    """Bad input the user must fix; the message says where and what, `line` the line of the
    file it is on (when it is on one) and `resume` the first line of the first record not
    read (every record before it was)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line
        self.resume = line


@dataclass(slots=True)
class Row:
    line: int
    obj: dict[str, Any] | None  # None when the line could not be read
    problem: str | None = None
    reason: str | None = None  # with `problem`: not_json, not_object or bad_row


def header_key(name: str) -> str:
    """A header name as compared: full-width forms folded (ＩＤ, 地址Ａ), case, spaces, `_`
    and `-` ignored."""
    folded = unicodedata.normalize("NFKC", name).casefold()
    return "".join(c for c in folded if not c.isspace() and c not in "_-")


_ALIASES = {role: {header_key(n) for n in names} for role, names in HEADER_NAMES.items()}


def check_encoding(encoding: str) -> str:
    """The codec name of `encoding` ("auto" stays "auto"); InputError for an unknown one."""
    if encoding == "auto":
        return "auto"
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise InputError(f"unknown encoding {encoding!r}; pass a Python codec name such as "
                         "utf-8, gb18030, gbk, big5 or utf-16") from None
    return "utf-8" if name == "utf-8-sig" else name


def _wide(codec: str) -> bool:
    return codec.startswith(("utf-16", "utf-32"))


def input_format(name: str, fmt: str = "auto") -> str:
    """The format of input `name`: `fmt` when forced, else by extension."""
    if fmt != "auto":
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; pass --format csv, tsv, jsonl or xlsx")
        return fmt
    suffix = Path(name).suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    if suffix == ".xls":
        raise InputError(f"{name} is an old binary Excel file (.xls), which cannot be read; "
                         "save it as .xlsx (Excel Workbook) or as CSV")
    raise InputError(f"cannot tell the format of {name} from its extension; use .csv, .tsv, "
                     ".jsonl or .xlsx, or pass --format csv|tsv|jsonl|xlsx")


def _open_binary(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    path = Path(name)
    if path.is_dir():
        raise InputError(f"{name} is a folder, not a file; name a .csv, .tsv, .jsonl or .xlsx "
                         "file")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{name} does not exist; check the path") from None
    except OSError as exc:
        raise InputError(f"cannot open {name}: {exc.strerror}") from None


def _shown(name: str) -> str:
    return "stdin" if name == "-" else name


# -- decoding ----------------------------------------------------------------------------------


class Decoder:
    """Decodes a byte stream's lines, choosing the encoding as the module docstring says."""

    def __init__(self, name: str, encoding: str = "auto"):
        self.name = name
        forced = check_encoding(encoding)
        self.forced = None if forced == "auto" else forced
        self.encoding: str | None = self.forced  # chosen so far
        self._neither = False  # most lines were neither UTF-8 nor GB18030

    def lines(self, fh: IO[bytes]) -> Iterator[str]:
        """Decoded lines of `fh`, line endings kept."""
        first = fh.readline()
        for bom, codec in _WIDE_BOMS:
            if first.startswith(bom) and self.forced in (None, codec):
                self.encoding = codec
                yield from self._wide_lines(first, fh)
                return
        if self.forced is not None and _wide(self.forced):
            yield from self._wide_lines(first, fh)
            return
        if first.startswith(codecs.BOM_UTF8) and self.forced in (None, "utf-8"):
            first, self.encoding = first[len(codecs.BOM_UTF8):], "utf-8"
        elif first.startswith(_GB18030_BOM) and self.forced in (None, "gb18030"):
            first, self.encoding = first[len(_GB18030_BOM):], "gb18030"
        yield from self._narrow_lines(first, fh)

    def _narrow_lines(self, first: bytes, fh: IO[bytes]) -> Iterator[str]:
        """Whole lines decoded a chunk at a time (one C call per chunk, not per line); the
        first chunk that is not plain ASCII is the look-ahead that picks the encoding. At a
        bad byte, the lines before it are given, then InputError names its line."""
        n = 1  # the line number of the chunk's first line
        for chunk in _whole_lines(first, fh):
            if chunk.isascii():  # ASCII reads the same in every encoding taken here
                text = chunk.decode("ascii")
            else:
                if self.encoding is None:
                    self.encoding = self._choose(chunk)
                try:
                    text = chunk.decode(self.encoding)
                except UnicodeDecodeError as exc:
                    good = chunk[:chunk.rfind(b"\n", 0, exc.start) + 1]
                    yield from _split(good.decode(self.encoding))
                    at = n + good.count(b"\n")
                    raise InputError(self._bad_line(at, chunk, exc.start), at) from None
            n += chunk.count(b"\n")
            yield from _split(text)

    def _choose(self, chunk: bytes) -> str:
        """UTF-8 when at least half the chunk's non-ASCII lines are UTF-8, else GB18030 when
        at least half are GB18030; else UTF-8, and the first line that is not says the file
        is neither."""
        text = [b for b in chunk.split(b"\n") if not b.isascii()]
        for codec in ("utf-8", "gb18030"):
            if 2 * sum(_decodes(b, codec) for b in text) >= len(text):
                return codec
        self._neither = True
        return "utf-8"

    def _wide_lines(self, first: bytes, fh: IO[bytes]) -> Iterator[str]:
        """UTF-16/32 text: the newline is more than one byte, so the stream is decoded whole."""
        codec = self.encoding or self.forced
        stream = io.TextIOWrapper(io.BufferedReader(_Chained(first, fh)), encoding=codec,
                                  errors="strict", newline="")
        n = 0
        try:
            for n, line in enumerate(stream, 1):
                yield line.lstrip("\ufeff") if n == 1 else line
        except UnicodeDecodeError as exc:
            raise InputError(f"{_shown(self.name)}: line {n + 1}: not valid {codec.upper()} "
                             f"({exc.reason}); {self._fix(codec)}", n + 1) from None

    def _bad_line(self, n: int, chunk: bytes, at: int) -> str:
        codec = self.encoding or "utf-8"
        column = at - (chunk.rfind(b"\n", 0, at) + 1)
        where = f"{_shown(self.name)}: line {n}: byte 0x{chunk[at]:02x} (byte {column + 1} of " \
                "the line)"
        if self.forced:
            return f"{where} is not valid {codec.upper()} (--encoding {self.forced}); " \
                   f"{self._fix(codec)}"
        if self._neither:
            return f"{where} is not UTF-8, and most of the file is neither UTF-8 nor " \
                   "GB18030/GBK; pass --encoding NAME (e.g. big5), or convert the file with: " \
                   f"{self._iconv('NAME', '')}"
        return f"{where} is not valid {codec.upper()}, the encoding the rest of the file reads " \
               f"as; {self._fix(codec)}"

    def _fix(self, codec: str) -> str:
        return f"drop the bad bytes with: {self._iconv(codec.upper(), ' -c')}, or fix that line"

    def _iconv(self, codec: str, flags: str) -> str:
        if self.name == "-":
            return f"iconv -f {codec} -t UTF-8{flags} (as a filter before mgeo)"
        path = Path(self.name)
        fixed = path.with_name(f"{path.stem}.utf8{path.suffix}")
        return f"iconv -f {codec} -t UTF-8{flags} {shlex.quote(self.name)} > " \
               f"{shlex.quote(str(fixed))}"


def _whole_lines(first: bytes, fh: IO[bytes]) -> Iterator[bytes]:
    """`first`, then `fh`, in chunks of whole lines (up to about `LOOKAHEAD` bytes each; what
    a pipe has ready, so a stream is not held back to fill one)."""
    pending = first
    while True:
        data = fh.read1(LOOKAHEAD) if hasattr(fh, "read1") else fh.read(LOOKAHEAD)
        if not data:
            if pending:
                yield pending
            return
        pending += data
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield pending[:cut]
            pending = pending[cut:]


def _split(text: str) -> Iterator[str]:
    """Lines of `text`, ends kept, broken at newlines only."""
    if not _SEPARATORS.search(text) and not ("\r" in text and _LONE_CR.search(text)):
        return iter(text.splitlines(keepends=True))
    lines = text.split("\n")  # a lone \r or a Unicode line separator inside a field stays
    return itertools.chain((line + "\n" for line in lines[:-1]), [lines[-1]] if lines[-1] else [])


def _decodes(b: bytes, codec: str) -> bool:
    try:
        b.decode(codec)
    except UnicodeDecodeError:
        return False
    return True


class _Chained(io.RawIOBase):
    """`head` followed by the rest of `fh`, as one raw stream (for TextIOWrapper)."""

    def __init__(self, head: bytes, fh: IO[bytes]):
        self._head, self._fh = head, fh

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._fh.read(len(buf))
        buf[:len(data)] = data
        return len(data)


# -- columns -----------------------------------------------------------------------------------


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, str]:
    """`--columns` as a role -> header name mapping ("id=编号,addr1=地址A" or a mapping)."""
    if not spec:
        return {}
    if isinstance(spec, str):
        pairs = {}
        for part in spec.split(","):
            if part.strip():
                role, sep, name = part.partition("=")
                if not sep:
                    raise InputError(f"--columns takes ROLE=COLUMN,...; got {part.strip()!r}")
                pairs[role.strip()] = name.strip()
        spec = pairs
    unknown = [r for r in spec if r not in ROLES]
    if unknown:
        raise InputError(f"--columns names {', '.join(map(repr, unknown))}; the roles are "
                         "id, addr1 and addr2 (e.g. --columns id=编号,addr1=地址A,addr2=地址B)")
    return dict(spec)


def resolve_columns(name: str, header: list[str], columns: Mapping[str, str],
                    id_from_row: bool) -> dict[str, int]:
    """Role -> column index of `header`, from `columns`, then `HEADER_NAMES`."""
    found: dict[str, int] = {}
    keys = [header_key(h) for h in header]
    for role, wanted in columns.items():
        idx = [i for i, h in enumerate(header) if h == wanted] or \
              [i for i, k in enumerate(keys) if k == header_key(wanted)]
        if not idx:
            raise InputError(f"{_shown(name)}: --columns {role}={wanted}: no such column (the "
                             f"header has: {_listed(header)})")
        found[role] = idx[0]
    for role in ROLES:
        if role in found or (role == "id" and id_from_row):
            continue
        taken = set(found.values())
        idx = [i for i, k in enumerate(keys) if k in _ALIASES[role] and i not in taken]
        exact = [i for i in idx if keys[i] == role]
        if len(idx) > 1 and len(exact) != 1:
            raise InputError(f"{_shown(name)}: columns {_listed([header[i] for i in idx])} could "
                             f"each be {role}; say which with --columns {role}=COLUMN")
        if idx:
            found[role] = exact[0] if exact else idx[0]
    missing = [r for r in ROLES if r not in found and not (r == "id" and id_from_row)]
    if missing:
        hint = f"--columns {','.join(f'{r}=COLUMN' for r in missing)}"
        if "id" in missing:
            hint += " (or --id-from-row to number the rows)"
        raise InputError(f"{_shown(name)}: no column for {', '.join(missing)} (the header has: "
                         f"{_listed(header)}); name it with {hint}")
    return found


def _listed(names: Iterable[str]) -> str:
    text = ", ".join(names)
    return text if len(text) <= 200 else text[:200] + "..."


# -- cell values -------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    """An Excel cell as the text a CSV export would hold."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    return str(value)


def require_openpyxl(what: str):
    """openpyxl, or a ModuleNotFoundError naming the extra that brings it."""
    try:
        import openpyxl
    except ModuleNotFoundError:
        raise ModuleNotFoundError(f"{what} needs openpyxl: pip install 'mgeo-stream[excel]'",
                                  name="openpyxl") from None
    return openpyxl


# -- Excel sheets ------------------------------------------------------------------------------
#
# An .xlsx is a zip of XML parts. The first worksheet is streamed straight from its zip member
# through expat (ElementTree's XMLPullParser, in C), a row at a time, each row dropped from the
# tree once read, so memory stays flat in the sheet's rows; only the shared-strings table (where
# Excel puts every text cell, and which any cell may point into) and the cell styles (to tell a
# date from a number) are held whole. Values come out as openpyxl's read-only mode gives them
# (values_only, data_only), then as `_cell` writes them: tests/test_xlsx.py compares the two.
# Why not a library: openpyxl's read-only mode parses in Python (about 150 us a row, 7 times
# this), python-calamine loads the whole sheet into memory; zipfile and expat are the standard
# library's own, and expat (2.4 and later) bounds entity expansion, so a hostile file cannot
# blow memory up.

_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_TYPES = "{http://schemas.openxmlformats.org/package/2006/content-types}"
_REL_ID = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_VALUE, _INLINE = _MAIN + "v", _MAIN + "is"
_TEXT, _RUN = _MAIN + "t", _MAIN + "r"
# The content types of a workbook part, in the order openpyxl looks for them.
_WORKBOOK_TYPES = tuple(f"application/vnd.{t}.main+xml" for t in (
    "ms-excel.template.macroEnabled", "openxmlformats-officedocument.spreadsheetml.template",
    "ms-excel.sheet.macroEnabled", "openxmlformats-officedocument.spreadsheetml.sheet"))
_SHARED_STRINGS = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"
# Built-in number formats that are dates or times (ECMA-376 18.8.30), and the elapsed-time one.
_DATE_FORMATS = frozenset(range(14, 23)) | {45, 46, 47}
_ELAPSED_FORMATS = frozenset({46})
_QUOTED_OR_LOCALE = re.compile(r'".*?"|\[(?!hh?\]|mm?\]|ss?\])[^\]]*\]')
_DATE_CODE = re.compile(r"(?<![_\\])[dmhysDMHYS]")
_ELAPSED_CODE = re.compile(r"\[hh?\](:mm(:ss(\.0*)?)?)?|\[mm?\](:ss(\.0*)?)?|\[ss?\](\.0*)?", re.I)
_CELL_REF = re.compile(r"\$?([A-Za-z]{1,3})\$?(\d+)$")
_EPOCHS = (_dt.datetime(1899, 12, 30), _dt.datetime(1904, 1, 1))
_CHUNK = 1 << 16


_COLUMNS: dict[str, int] = {}  # "AB" -> 28, as met: bounded by Excel's 16,384 columns


def _column(letters: str) -> int:
    """The 1-based column of "A", "AB"..."""
    n = 0
    for ch in letters.upper():
        n = n * 26 + ord(ch) - 64
    return n


def _cell_column(ref: str) -> int:
    """The column of a cell reference ("C7" -> 3)."""
    letters = ref.rstrip("0123456789")
    n = _COLUMNS.get(letters)
    if n is None:
        match = _CELL_REF.match(ref)
        if match is None:
            raise ValueError(f"{ref!r} is not a cell reference")
        n = _column(match.group(1))
        if letters.isalpha():
            _COLUMNS[letters] = n
    return n


def _text(node) -> str:
    """A string item's text (`<si>` or `<is>`): its plain `<t>` then its runs' `<t>`; phonetic
    guides (`<rPh>`) left out."""
    plain, runs = None, []
    for child in node:
        if child.tag == _TEXT:
            plain = child.text
        elif child.tag == _RUN:
            text = None
            for part in child:
                if part.tag == _TEXT:
                    text = part.text
            if text is not None:
                runs.append(text)
    return "".join(runs) if plain is None else plain + "".join(runs)


def _date_code(code: str | None) -> tuple[bool, bool]:
    """(is a date or time, is elapsed time) for a number format code: its first section, with
    quoted text and [locale] or [colour] parts left out, holds a date or time letter."""
    if code is None:
        return False, False
    first = code.split(";")[0]
    return (_DATE_CODE.search(_QUOTED_OR_LOCALE.sub("", first)) is not None,
            _ELAPSED_CODE.search(first) is not None)


def _from_serial(value: float, epoch: _dt.datetime, elapsed: bool) -> Any:
    """An Excel date serial as a datetime (a time of day when under a day; a timedelta for
    an elapsed-time format), to the millisecond; 1900-based serials skip Excel's 29 Feb 1900."""
    if elapsed:
        span = _dt.timedelta(days=value)
        if span.microseconds:
            span = _dt.timedelta(seconds=span.total_seconds() // 1,
                                 microseconds=round(span.microseconds, -3))
        return span
    day, fraction = divmod(value, 1)
    part = _dt.timedelta(milliseconds=round(fraction * 86_400_000))
    if 0 <= value < 1 and part.days == 0:
        minutes, seconds = divmod(part.seconds, 60)
        return _dt.time(minutes // 60, minutes % 60, seconds, part.microseconds)
    if 0 < value < 60 and epoch is _EPOCHS[0]:
        day += 1
    return epoch + _dt.timedelta(days=day) + part


_ISO_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})?T?(\d{2}:\d{2}(?::\d{2}(?:\.\d{1,3})?)?)?Z?$")


def _from_iso(text: str) -> Any:
    """A `t="d"` cell: an ISO 8601 date, time or both."""
    match = _ISO_DATE.match(text)
    if not match or not any(match.groups()):
        raise ValueError(f"invalid date {text!r}")
    day, clock = match.groups()
    if day and clock:
        return _dt.datetime.fromisoformat(f"{day}T{clock}")
    return _dt.date.fromisoformat(day) if day else _dt.time.fromisoformat(clock)


class XlsxSheet:
    """The first worksheet of an .xlsx (in workbook order, chart sheets skipped), opened from a
    seekable binary file: `rows()` gives its rows, numbered from 1 with the rows a sheet leaves
    out given empty, each as wide as the sheet's `<dimension>` says (or to its last cell)."""

    def __init__(self, fh: IO[bytes]):
        self.zip = zipfile.ZipFile(fh)
        try:
            self._open()
        except BaseException:
            self.zip.close()
            raise

    def _open(self) -> None:
        names = set(self.zip.namelist())
        types = ET.fromstring(self.zip.read("[Content_Types].xml"))
        parts: dict[str, str] = {}
        for o in types.iter(_TYPES + "Override"):
            parts.setdefault(o.get("ContentType", ""), o.get("PartName", "")[1:])
        book_part = next((parts[t] for t in _WORKBOOK_TYPES if t in parts), None)
        if book_part is None:
            defaults = {d.get("ContentType") for d in types.iter(_TYPES + "Default")}
            if not defaults & set(_WORKBOOK_TYPES):
                raise ValueError("File contains no valid workbook part")
            book_part = "xl/workbook.xml"
        book = ET.fromstring(self.zip.read(book_part))
        props = book.find(_MAIN + "workbookPr")
        date1904 = props is not None and props.get("date1904", "0").lower() in ("1", "true")
        self.epoch = _EPOCHS[date1904]
        rels = self._relations(book_part)
        self.path: str | None = None
        for sheet in book.iter(_MAIN + "sheet"):
            rid = sheet.get(_REL_ID)
            if not rid:
                continue
            kind, target = rels[rid]
            if target in names and "chartsheet" not in kind:
                self.path = target
                break
        strings = parts.get(_SHARED_STRINGS)
        self.strings = self._strings(strings) if strings else []
        self.dates, self.elapsed = self._styles() if "xl/styles.xml" in names else (set(), set())
        self.max_row: int | None = None  # from the sheet's <dimension>, once rows() starts
        self.max_col: int | None = None

    def _relations(self, part: str) -> dict[str, tuple[str, str]]:
        """A part's relationships: id -> (type, the target's path in the zip)."""
        folder, name = posixpath.split(part)
        rels = ET.fromstring(self.zip.read(posixpath.join(folder, "_rels", f"{name}.rels")))
        found = {}
        for rel in rels.iter(_RELS + "Relationship"):
            target = rel.get("Target", "")
            if rel.get("TargetMode") != "External":
                target = target[1:] if target.startswith("/") else \
                    posixpath.normpath(posixpath.join(folder, target))
            found[rel.get("Id")] = (rel.get("Type", ""), target)
        return found

    def _strings(self, part: str) -> list[str]:
        """The shared-strings table, streamed as the sheet is (it is as big as the text)."""
        return [_text(si).replace("x005F_", "") for si in self._items(part, "si", "sst")]

    def _items(self, part: str, tag: str, parent: str, watch: str = "",
               seen: Callable[[Any], None] | None = None) -> Iterator[Any]:
        """Each `<tag>` child of `<parent>` in zip member `part`, whole, in file order; `seen`
        is given each `<watch>` as it starts. Start events only: an item is given when the next
        one starts (it is whole then), or at the end, then dropped from the tree."""
        tag, parent, watch = _MAIN + tag, _MAIN + parent, watch and _MAIN + watch
        parser = ET.XMLPullParser(("start",))
        holder = item = None
        with self.zip.open(part) as src:
            while True:
                chunk = src.read(_CHUNK)
                if chunk:
                    parser.feed(chunk)
                else:
                    parser.close()
                for _, el in parser.read_events():
                    if el.tag == tag:
                        if item is not None:
                            yield item
                            holder.remove(item)
                        item = el
                    elif el.tag == parent:
                        holder = el
                    elif el.tag == watch:
                        seen(el)
                if not chunk:
                    break
        if item is not None:
            yield item

    def _styles(self) -> tuple[set[int], set[int]]:
        """The cell styles (indexes of `s="N"`) that show a number as a date or time, and those
        that show it as elapsed time."""
        styles = ET.fromstring(self.zip.read("xl/styles.xml"))
        codes = {int(f.get("numFmtId")): f.get("formatCode")
                 for f in styles.iterfind(f"{_MAIN}numFmts/{_MAIN}numFmt")}
        dates, elapsed = set(), set()
        for i, xf in enumerate(styles.iterfind(f"{_MAIN}cellXfs/{_MAIN}xf")):
            fmt = int(xf.get("numFmtId", 0))
            if fmt in codes:
                date, span = _date_code(codes[fmt])
            else:
                date, span = fmt in _DATE_FORMATS, fmt in _ELAPSED_FORMATS
            if date:
                dates.add(i)
            if span:
                elapsed.add(i)
        return dates, elapsed

    def close(self) -> None:
        self.zip.close()

    def rows(self) -> Iterator[tuple]:
        """The sheet's rows as value tuples (None for an empty cell), from row 1: a row the
        sheet leaves out comes as an empty one, a row past the dimension's last ends it."""
        if self.path is None:
            return
        counter, idx, empty = 1, 1, None
        for idx, cells in self._parsed():
            if empty is None:
                empty = () if self.max_col is None else (None,) * self.max_col
            if self.max_row is not None and idx > self.max_row:
                break
            while counter < idx:
                counter += 1
                yield empty
            if counter <= idx:
                counter += 1
                yield self._values(cells)
        if self.max_row is not None and self.max_row < idx:
            yield from itertools.repeat(empty, self.max_row + 1 - counter)

    def _values(self, cells: list[tuple[int, Any]]) -> tuple:
        width = self.max_col or (cells[-1][0] if cells else 0)
        values = [None] * width
        for column, value in cells:
            if column <= width:
                values[column - 1] = value
        return tuple(values)

    def _parsed(self) -> Iterator[tuple[int, list[tuple[int, Any]]]]:
        """(row number, [(column, value)]) of each `<row>`, in file order."""
        n = 0
        for row in self._items(self.path, "row", "sheetData", "dimension", self._dimension):
            n, cells = self._row(row, n)
            yield n, cells

    def _dimension(self, element) -> None:
        match = _CELL_REF.match(element.get("ref", "").split(":")[-1])
        if match:
            self.max_col, self.max_row = _column(match.group(1)), int(match.group(2))

    def _row(self, row, previous: int) -> tuple[int, list[tuple[int, Any]]]:
        """A row's number (its `r`, else the one after `previous`) and its cells' values."""
        r = row.get("r")
        if r is None:
            n = previous + 1
        else:
            try:
                n = int(r)
            except ValueError:
                number = float(r)
                if not number.is_integer():
                    raise ValueError(f"{r} is not a valid row number") from None
                n = int(number)
        cells, column = [], 0
        strings, dates = self.strings, self.dates
        for c in row:
            ref = c.get("r")
            column = _cell_column(ref) if ref else column + 1
            kind = c.get("t", "n")
            if kind == "inlineStr":
                inline = c.find(_INLINE)
                cells.append((column, None if inline is None else _text(inline)))
                continue
            value = c.findtext(_VALUE) or None
            if value is not None:
                if kind == "s":
                    value = strings[int(value)]
                elif kind == "n":
                    value = float(value) if "." in value or "E" in value or "e" in value \
                        else int(value)
                    if dates:  # a cell without a style has the first one
                        style = int(c.get("s") or 0)
                        if style in dates:
                            value = self._date(value, style)
                elif kind == "b":
                    value = bool(int(value))
                elif kind == "d":
                    value = _from_iso(value)
            cells.append((column, value))
        return n, cells

    def _date(self, value: float, style: int) -> Any:
        try:
            return _from_serial(value, self.epoch, style in self.elapsed)
        except (OverflowError, ValueError):
            return "#VALUE!"


# -- the reader --------------------------------------------------------------------------------


class PairReader:
    """An open pair file: opening checks the path, the format, the encoding's name and the
    header (a table's roles are resolved), so every mistake shows before any work; iterating
    gives `Row`s in file order. Close it (or use it as a context manager) when done."""

    def __init__(self, source: str | os.PathLike, format: str = "auto", encoding: str = "auto",
                 columns: str | Mapping[str, str] | None = None, id_from_row: bool = False):
        self.name = str(source)
        self.stdin = self.name == "-"
        self.shown = _shown(self.name)  # for messages
        self.columns = parse_columns(columns)
        self.id_from_row = id_from_row
        self.header: list[str] = []
        self.header_line = 0
        self.roles: dict[str, int] = {}
        self._xlsx: XlsxSheet | None = None
        self._decoder = Decoder(self.name, encoding)
        self._records: Iterator[tuple[int, list[str] | _BadRecord]] = iter(())
        self._closers: list = []
        fh = _open_binary(self.name)
        if not self.stdin:
            self._closers.append(fh.close)
        try:
            self.format = format if self.stdin else input_format(self.name, format)
            if self.format not in ("auto", *FORMATS):
                raise InputError(f"unknown format {format!r}; pass --format csv, tsv, jsonl "
                                 "or xlsx")
            self._rows = self._open(fh if hasattr(fh, "peek") else io.BufferedReader(fh))
        except BaseException:
            self.close()
            raise

    @property
    def sheet_rows(self) -> int | None:
        """The last row of a workbook's sheet, from its dimension (None when it has none)."""
        return None if self._xlsx is None else self._xlsx.max_row

    @property
    def encoding(self) -> str | None:
        """The text encoding read so far (None for Excel, or before any non-ASCII line)."""
        return None if self.format == "xlsx" else self._decoder.encoding

    def describe(self) -> str:
        """How the file was read, for a summary line: "CSV, GB18030", "Excel sheet"..."""
        if self.format == "xlsx":
            return "Excel sheet"
        return f"{self.format.upper()}, {(self.encoding or 'ascii').upper()}"

    def _open(self, fh: io.BufferedReader) -> Iterator[Row]:
        zipped = fh.peek(len(_ZIP))[:len(_ZIP)] == _ZIP
        if self.format == "auto":
            self.format = "xlsx" if zipped else self._sniff(fh)
        elif zipped and self.format != "xlsx":
            raise InputError(f"{_shown(self.name)} is an Excel workbook (or another zip), not "
                             f"{self.format.upper()} text; pass --format xlsx or name it .xlsx")
        if self.id_from_row and self.format == "jsonl":
            raise InputError(f"{_shown(self.name)}: --id-from-row is for tables (CSV, TSV, "
                             "Excel); JSONL objects carry their own id")
        if self.format == "xlsx":
            return self._table(self._sheet(self._spool(fh) if self.stdin else fh))
        lines = self._decoder.lines(fh)
        if self.format == "jsonl":
            return self._jsonl(lines)
        return self._table(self._text_records(lines))

    def _spool(self, fh: IO[bytes]) -> IO[bytes]:
        """A workbook from stdin, in a temporary file: a zip is read from its end."""
        tmp = tempfile.TemporaryFile()
        self._closers.append(tmp.close)
        while chunk := fh.read(1 << 20):
            tmp.write(chunk)
        tmp.seek(0)
        return tmp

    @staticmethod
    def _sniff(fh: io.BufferedReader) -> str:
        line = fh.peek(1 << 16).lstrip(codecs.BOM_UTF8).lstrip().split(b"\n", 1)[0]
        if line.startswith(b"{"):
            return "jsonl"
        return "tsv" if b"\t" in line else "csv"

    # -- tables --

    def _text_records(self, lines: Iterator[str]) -> Iterator[tuple[int, list[str] | _BadRecord]]:
        reader = csv.reader(lines, dialect="excel-tab" if self.format == "tsv" else "excel")
        start = 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                values = _BadRecord(str(exc))
            except InputError as exc:
                exc.resume = start  # the record under way when the line failed
                raise
            yield start, values
            start = reader.line_num + 1

    def _sheet(self, fh: IO[bytes]) -> Iterator[tuple[int, list[str]]]:
        try:
            sheet = XlsxSheet(fh)
        except Exception as exc:  # noqa: BLE001 - zipfile's, XML's and the format's errors
            raise InputError(f"{_shown(self.name)} is not a readable Excel .xlsx workbook "
                             f"({type(exc).__name__}: {exc}); save it again as .xlsx, or as "
                             "CSV") from None
        self._closers.append(sheet.close)
        if sheet.path is None:
            raise InputError(f"{_shown(self.name)}: the workbook has no sheet")
        self._xlsx = sheet
        return self._sheet_rows(sheet)

    def _sheet_rows(self, sheet: XlsxSheet) -> Iterator[tuple[int, list[str]]]:
        n = 0
        try:
            for n, values in enumerate(sheet.rows(), 1):
                yield n, [_cell(v) for v in values]
        except Exception as exc:  # noqa: BLE001 - a damaged zip or XML, half-way
            raise InputError(f"{_shown(self.name)}: row {n + 1} of the sheet cannot be read "
                             f"({type(exc).__name__}: {exc}); save the workbook again",
                             n + 1) from None

    def _table(self, records: Iterator[tuple[int, list[str] | _BadRecord]]) -> Iterator[Row]:
        for line, values in records:
            if isinstance(values, _BadRecord):
                raise InputError(f"{_shown(self.name)}: line {line}: the header cannot be read "
                                 f"({values.problem})")
            if any(v.strip() for v in values):
                break
        else:
            raise InputError(f"{_shown(self.name)} is empty; the first line must name the "
                             "columns (id, addr1, addr2)")
        self.header = [h.strip() for h in values]
        self.header_line = line
        self.roles = resolve_columns(self.name, self.header, self.columns, self.id_from_row)
        self._records = records
        return self._table_rows(records)

    def _table_rows(self, records: Iterator[tuple[int, list[str] | _BadRecord]]
                    ) -> Iterator[Row]:
        roles, width = self.roles, len(self.header)
        extra = [(i, h or f"column{i + 1}") for i, h in enumerate(self.header)
                 if i not in roles.values()]
        sheet = self.format == "xlsx"
        for line, values in records:
            if isinstance(values, _BadRecord):
                yield Row(line, None, values.problem, "bad_row")
                continue
            if not "".join(values).strip():
                continue
            if len(values) != width:
                # A sheet's row stops at its last cell, and spreadsheets add empty cells.
                if sheet or not any(v.strip() for v in values[width:]):
                    values = (values + [""] * width)[:width]
                else:
                    yield Row(line, None, f"{len(values)} fields, the header has {width}",
                              "bad_row")
                    continue
            obj: dict[str, Any] = {
                "id": ROW_ID.format(line) if self.id_from_row else values[roles["id"]],
                "addr1": values[roles["addr1"]], "addr2": values[roles["addr2"]]}
            if extra:
                obj["meta"] = {h: values[i] for i, h in extra}
            yield Row(line, obj)

    # -- JSONL --

    def _jsonl(self, lines: Iterator[str]) -> Iterator[Row]:
        rename = {name: role for role, name in self.columns.items()}
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
            if rename:
                obj = {rename.get(k, k): v for k, v in obj.items()}
            yield Row(n, obj)

    # -- use --

    def __iter__(self) -> Iterator[Row]:
        return self._rows

    def count(self) -> int | None:
        """How many rows a fresh read of this file gives (blank lines not counted), reading it
        whole: every byte is decoded, so an encoding error shows now, not half-way through the
        work. None for stdin; for a workbook, its sheet's size from its dimensions, unread."""
        if self.stdin:
            return None
        if self.format == "xlsx":
            return None if self.sheet_rows is None else max(0, self.sheet_rows - self.header_line)
        with PairReader(self.name, self.format, self._decoder.forced or "auto", self.columns,
                        self.id_from_row) as again:
            if self.format == "jsonl":
                return sum(1 for _ in again)
            return sum(1 for _, values in again._records
                       if isinstance(values, _BadRecord) or "".join(values).strip())

    def close(self) -> None:
        while self._closers:
            self._closers.pop()()

    def __enter__(self) -> "PairReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass(slots=True)
class _BadRecord:
    problem: str


def read_rows(source: str | os.PathLike, fmt: str = "auto", **options: Any) -> Iterator[Row]:
    """Rows of a pair file, in order, each with its line number; unreadable lines say why.
    `options`: encoding, columns, id_from_row (see `PairReader`)."""
    with PairReader(source, fmt, **options) as reader:
        yield from reader


def count_rows(source: str | os.PathLike, fmt: str = "auto", **options: Any) -> int | None:
    """How many rows `source` holds (what `read_rows` reads, unreadable ones included); None
    for stdin. Reads the whole file: see `PairReader.count`."""
    if str(source) == "-":
        return None
    with PairReader(source, fmt, **options) as reader:
        return reader.count()
