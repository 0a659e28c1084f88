"""The streaming .xlsx reader (issue 21): the same rows as openpyxl's read-only mode, on
workbooks openpyxl writes (inline strings) and on ones written as Excel writes them (shared
strings, styles, sheets out of order); no openpyxl needed to read; memory flat in the rows;
a damaged workbook named as one, with the row where reading stopped."""

from __future__ import annotations

import datetime as dt
import io
import sys
import tracemalloc
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mgeo.readers import InputError, PairReader
from pairfiles import rows as _rows, workbook as _workbook

openpyxl = pytest.importorskip("openpyxl")

MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
PKG = "http://schemas.openxmlformats.org/package/2006/relationships"
DOC = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml"


def _ours(path: Path) -> list[tuple]:
    from mgeo.readers import XlsxSheet

    with open(path, "rb") as fh:
        sheet = XlsxSheet(fh)
        try:
            return list(sheet.rows())
        finally:
            sheet.close()


def _openpyxl(path: Path) -> list[tuple]:
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        return list(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()


def _same(path: Path) -> list[tuple]:
    ours, theirs = _ours(path), _openpyxl(path)
    assert ours == theirs
    assert [[type(v) for v in r] for r in ours] == [[type(v) for v in r] for r in theirs]
    return ours


def _package(path: Path, sheets: dict[str, str], strings: list[str] | None = None,
             styles: str | None = None, workbook_pr: str = "") -> Path:
    """An .xlsx from raw parts, as Excel lays one out: `sheets` (name -> sheetData XML and
    whatever comes before it) listed in the workbook in that order, their files numbered
    backwards (the first sheet is the last file), `strings` as `<si>` bodies."""
    names = list(sheets)
    files = {name: f"worksheets/sheet{len(names) - i}.xml" for i, name in enumerate(names)}
    overrides = [("/xl/workbook.xml", f"{TYPE}.sheet.main+xml")]
    overrides += [(f"/xl/{f}", f"{TYPE}.worksheet+xml") for f in files.values()]
    rels = [(f"rId{i + 1}", "worksheet", files[n]) for i, n in enumerate(names)]
    parts = {}
    if strings is not None:
        overrides.append(("/xl/sharedStrings.xml", f"{TYPE}.sharedStrings+xml"))
        rels.append(("rIdS", "sharedStrings", "sharedStrings.xml"))
        parts["xl/sharedStrings.xml"] = (
            f'<sst xmlns="{MAIN}" count="{len(strings)}">'
            + "".join(f"<si>{s}</si>" for s in strings) + "</sst>")
    if styles is not None:
        parts["xl/styles.xml"] = f'<styleSheet xmlns="{MAIN}">{styles}</styleSheet>'
    parts["[Content_Types].xml"] = (
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        + "".join(f'<Override PartName="{p}" ContentType="{t}"/>' for p, t in overrides)
        + "</Types>")
    parts["_rels/.rels"] = (
        f'<Relationships xmlns="{PKG}"><Relationship Id="rId1" Type="{DOC}/officeDocument" '
        'Target="xl/workbook.xml"/></Relationships>')
    parts["xl/workbook.xml"] = (
        f'<workbook xmlns="{MAIN}" xmlns:r="{DOC}">{workbook_pr}<sheets>'
        + "".join(f'<sheet name="{n}" sheetId="{i + 1}" r:id="rId{i + 1}"/>'
                  for i, n in enumerate(names)) + "</sheets></workbook>")
    parts["xl/_rels/workbook.xml.rels"] = (
        f'<Relationships xmlns="{PKG}">'
        + "".join(f'<Relationship Id="{i}" Type="{DOC}/{t}" Target="{f}"/>' for i, t, f in rels)
        + "</Relationships>")
    for name, body in sheets.items():
        parts[f"xl/{files[name]}"] = f'<worksheet xmlns="{MAIN}">{body}</worksheet>'
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in parts.items():
            z.writestr(name, '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>' + text)
    return path


# ---- the same rows as openpyxl -------------------------------------------------------------

def test_a_workbook_openpyxl_writes_reads_the_same(tmp_path):
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["编号", "地址1", "地址2", "金额", "有效", "日期"])
    sheet.append([12345, "浙江省杭州市西湖区文三路90号", "杭州市文三路90号", 1.5, True,
                  dt.date(2024, 2, 29)])
    sheet.append([1.0, "  前后空格  ", None, -0.25, False, dt.datetime(2024, 3, 1, 8, 30, 5)])
    sheet.append([10**20, "", "乙", 1e-7, None, dt.time(13, 45)])
    sheet["H9"] = "远处的格子"  # a gap of rows and columns
    sheet["B7"] = dt.timedelta(hours=30, minutes=15)
    sheet["C7"] = "=SUM(A2:A3)"  # no cached value: empty, as with data_only
    book.create_sheet("第二页").append(["不读", "这一页"])
    book.save(tmp_path / "b.xlsx")
    rows = _same(tmp_path / "b.xlsx")
    assert len(rows) == 9 and len(rows[0]) == 8 and rows[8][7] == "远处的格子"
    assert rows[1][0] == 12345 and rows[2][0] == 1.0 and rows[3][0] == 10**20
    with PairReader(tmp_path / "b.xlsx") as reader:
        got = [r.obj for r in reader]
    assert [g["id"] for g in got[:3]] == ["12345", "1", "1e+20"]  # as openpyxl's path gave
    assert got[0]["meta"]["日期"] == "2024-02-29T00:00:00" and got[0]["meta"]["有效"] == "TRUE"
    assert got[1]["meta"]["日期"] == "2024-03-01T08:30:05" and got[2]["meta"]["金额"] == "1e-07"
    assert got[1]["addr1"] == "  前后空格  " and got[2]["meta"]["日期"] == "13:45:00"


def test_a_write_only_workbook_without_dimension_reads_the_same(tmp_path):
    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("pairs")
    sheet.append(["id", "addr1", "addr2"])
    for i in range(300):
        sheet.append([i, f"地址{i}号", None if i % 7 else "乙"])
    sheet.append([])
    sheet.append(["last"])
    book.save(tmp_path / "w.xlsx")
    rows = _same(tmp_path / "w.xlsx")
    assert len(rows) == 303 and rows[-1] == ("last",)
    with PairReader(tmp_path / "w.xlsx") as reader:
        assert reader.count() is None  # no dimension: the size is not known ahead
        assert sum(1 for _ in reader) == 301


STYLES = ('<numFmts count="3"><numFmt numFmtId="164" formatCode="yyyy&quot;年&quot;m&quot;月'
          '&quot;d&quot;日&quot;"/><numFmt numFmtId="165" formatCode="[h]:mm"/><numFmt '
          'numFmtId="166" formatCode="&quot;day&quot; 0.00;[Red]0"/></numFmts><cellXfs count="5">'
          '<xf numFmtId="0"/><xf numFmtId="14"/><xf numFmtId="164"/><xf numFmtId="165"/>'
          '<xf numFmtId="166"/></cellXfs>')

EXCEL_SHEET = (
    '<dimension ref="A1:F8"/><sheetData>'
    '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c>'
    '<c r="C1" t="s"><v>2</v></c></row>'
    '<row r="2"><c r="A2"><v>1001</v></c><c r="B2" t="s"><v>3</v></c><c r="C2" t="s"><v>4</v>'
    '</c><c r="D2" s="1"><v>45351</v></c><c r="E2" s="2"><v>45351.5</v></c>'
    '<c r="F2" s="3"><v>1.5</v></c></row>'
    '<row r="4"><c r="A4" t="str"><f>A2&amp;"x"</f><v>1001x</v></c><c r="C4" t="e"><v>#N/A</v>'
    '</c><c r="D4" t="b"><v>0</v></c><c r="E4" s="4"><v>2.5</v></c><c r="F4"><v>1E3</v></c></row>'
    '<row><c t="s"><v>5</v></c><c><v/></c><c t="inlineStr"><is><r><t>富</t></r><r><rPr><b/>'
    '</rPr><t xml:space="preserve">文本 </t></r></is></c><c t="d"><v>2024-01-02T03:04:05Z</v>'
    '</c><c s="1"><v>0.25</v></c><c s="2"><v>99999999</v></c></row>'
    '<row r="7"><c r="A7" t="s"><v>6</v></c><c r="G7"><v>7</v></c></row>'
    '</sheetData>')
STRINGS = ["<t>编号</t>", "<t>地址A</t>", "<t>地址B</t>",
           "<t>栖霞区文枢东路2号</t><rPh sb=\"0\" eb=\"1\"><t>ふりがな</t></rPh>",
           "<r><t>文枢东路</t></r><r><rPr><i/></rPr><t>2号书店</t></r>",
           "<t>_x005F_x000D_ kept</t>", '<t xml:space="preserve">  两端空格 </t>']


@pytest.mark.filterwarnings("ignore::UserWarning")  # openpyxl on the bare styles, the date
@pytest.mark.parametrize("date1904,first_style", [(False, 0), (True, 0), (False, 14)])
def test_a_workbook_as_excel_writes_it_reads_the_same(tmp_path, date1904, first_style):
    """Shared strings (rich text, phonetic guides, escapes), styles that make numbers dates
    (a cell without `s` has the first style), the 1904 date system, formulas' cached values,
    rows and cells without references, a cell past the dimension, and the first sheet of the
    workbook stored as its last file."""
    pr = '<workbookPr date1904="1"/>' if date1904 else ""
    styles = STYLES.replace('<xf numFmtId="0"/>', f'<xf numFmtId="{first_style}"/>')
    path = _package(tmp_path / "e.xlsx", {"地址对": EXCEL_SHEET,
                                          "other": '<sheetData><row r="1"><c r="A1"><v>9</v>'
                                                   "</c></row></sheetData>"},
                    STRINGS, styles, pr)
    rows = _same(path)
    # Seven rows: the dimension's eighth holds nothing; G7 lies past the dimension's F.
    assert len(rows) == 7 and rows[6] == ("  两端空格 ",) + (None,) * 5
    assert rows[3][4] == 2.5  # "day" in quotes: a number, not a date
    assert rows[1][0] == (dt.datetime(1902, 9, 27) if first_style else 1001)


def test_property_random_tables_read_the_same(tmp_path_factory):
    text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
    value = st.one_of(st.none(), text, st.booleans(), st.integers(-10**15, 10**15),
                      st.floats(allow_nan=False, allow_infinity=False, width=64),
                      st.dates(dt.date(1900, 3, 1), dt.date(2100, 1, 1)))
    table = st.lists(st.lists(value, max_size=6), min_size=1, max_size=8)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(table, st.booleans())
    def check(rows, write_only):
        path = tmp_path_factory.mktemp("p") / "r.xlsx"
        book = openpyxl.Workbook(write_only=write_only)
        sheet = book.create_sheet("s") if write_only else book.active
        for r in rows:
            sheet.append(r)
        book.save(path)
        _same(path)

    check()


# ---- no openpyxl needed, memory flat -------------------------------------------------------

def test_reading_needs_no_openpyxl(tmp_path, monkeypatch):
    src = _workbook(tmp_path / "b.xlsx", _rows(3))
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # `import openpyxl` fails
    with PairReader(src) as reader:
        assert [r.obj["id"] for r in reader] == ["1", "2", "3"]
    from mgeo.writers import ResultWriter

    with pytest.raises(ModuleNotFoundError, match=r"pip install 'mgeo-stream\[excel\]'"):
        ResultWriter(tmp_path / "r.xlsx", ["not_match", "partial_match", "exact_match"])


def _peak_reading(path: Path) -> int:
    """Peak bytes Python allocates while a PairReader opens `path` and reads every row."""
    tracemalloc.start()
    try:
        with PairReader(path) as reader:
            for _ in reader:
                pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_flat_in_the_rows(tmp_path):
    """Four times the rows, the same peak (the sheet's XML is streamed and each row dropped);
    openpyxl's read-only mode grows with the rows read."""
    def inline(n: int) -> Path:
        book = openpyxl.Workbook(write_only=True)
        sheet = book.create_sheet("pairs")
        sheet.append(["编号", "地址1", "地址2"])
        for i in range(n):
            sheet.append([f"r{i}", f"栖霞区仙林街道文枢东路{i}号商住楼4楼", f"文枢东路{i}号书店"])
        book.save(tmp_path / f"{n}.xlsx")
        return tmp_path / f"{n}.xlsx"

    small, big = _peak_reading(inline(5000)), _peak_reading(inline(20000))
    assert big < small * 1.25 + 64 * 1024, (small, big)


# ---- damaged workbooks, named as such ------------------------------------------------------

def _not_readable(path: Path, why: str) -> str:
    return f"{path} is not a readable Excel .xlsx workbook ({why}); save it again as .xlsx, " \
           "or as CSV"


def test_what_is_not_a_workbook_says_so(tmp_path):
    text = tmp_path / "text.xlsx"
    text.write_text("编号,地址1,地址2\n", encoding="utf-8")
    old = tmp_path / "old.xlsx"
    old.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500))  # an .xls renamed
    other = tmp_path / "other.xlsx"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("readme.txt", "not a workbook")
    cut = tmp_path / "cut.xlsx"
    cut.write_bytes(_workbook(tmp_path / "whole.xlsx", _rows(50)).read_bytes()[:2000])
    for path, why in [(text, "BadZipFile: File is not a zip file"),
                      (old, "BadZipFile: File is not a zip file"),
                      (other, "KeyError: \"There is no item named '[Content_Types].xml' in the "
                              "archive\""),
                      (cut, "BadZipFile: File is not a zip file")]:
        with pytest.raises(InputError) as err:
            PairReader(path)
        assert str(err.value) == _not_readable(path, why)


def test_a_sheet_damaged_half_way_names_the_row(tmp_path):
    body = "".join(f'<row r="{n}"><c r="A{n}"><v>{n}</v></c><c r="B{n}" t="inlineStr"><is><t>'
                   f'甲{n}</t></is></c><c r="C{n}" t="inlineStr"><is><t>乙</t></is></c></row>'
                   for n in range(2, 3001))
    body = body.replace('<row r="2500">', '<row r="2500"><c r="A2500"><v>1</v></row>')
    head = ('<row r="1"><c r="A1" t="inlineStr"><is><t>编号</t></is></c><c r="B1" t="inlineStr">'
            '<is><t>地址1</t></is></c><c r="C1" t="inlineStr"><is><t>地址2</t></is></c></row>')
    path = _package(tmp_path / "d.xlsx", {"s": f"<sheetData>{head}{body}</sheetData>"})
    read = []
    with PairReader(path) as reader, pytest.raises(InputError) as err:
        for row in reader:
            read.append(row.obj["id"])
    assert read == [str(n) for n in range(2, 2500)]
    assert str(err.value).startswith(f"{path}: row 2500 of the sheet cannot be read (ParseError:")
    assert err.value.line == 2500


def test_a_workbook_on_stdin_is_read_the_same(tmp_path, monkeypatch):
    src = _workbook(tmp_path / "b.xlsx", _rows(4))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(src.read_bytes())))
    with PairReader("-") as piped, PairReader(src) as named:
        assert [r.obj for r in piped] == [r.obj for r in named]
        assert named.count() == 4 and piped.count() is None
