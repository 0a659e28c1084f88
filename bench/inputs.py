"""What reading a GBK/GB18030 CSV or an Excel sheet costs against a UTF-8 CSV (issue 21).

    python bench/inputs.py [--rows 100000] [--big 400000] [--score-sample 3000]

For the same rows in each format it measures, best of --rounds passes, the reading `mgeo score`
and `mgeo produce` do (`mgeo.readers.PairReader`):
- open + whole-file check: the header, then every byte of a text file decoded before any work
  (`count`; a sheet is not read ahead, but opening it reads its shared strings);
- rows: every row read after that;
- peak memory of a fresh process reading the file (max RSS over a process that only imports),
  at --rows and --big rows, to show whether it grows with the file;
- the share of scoring those rows: scoring time is --rows over the pairs/s of `mgeo score`'s
  path (read, engine, write) measured on --score-sample rows with the bundled model on this
  machine's CPU.

Rows are `mgeo synth` pairs (10,000 made, then repeated with unique ids and addresses). Excel
files are made twice: by openpyxl (inline strings) and as Excel itself writes them (one
shared-strings table, which a reader must hold in memory whole). They are read by
`mgeo.readers.XlsxSheet` (zipfile and expat); openpyxl only writes them here.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from xml.sax.saxutils import escape

HEADER = ["编号", "地址1", "地址2", "标签"]


def make_rows(n: int, seed: int = 0) -> list[list[str]]:
    from mgeo.training.synth import generate_pairs

    base = generate_pairs(min(n, 10_000), seed)
    rows = []
    for i in range(n):
        p = base[i % len(base)]
        lap = i // len(base)
        suffix = f"{lap}栋" if lap else ""
        rows.append([f"r{i}", p["addr1"] + suffix, p["addr2"], p["label"]])
    return rows


def write_text(path: Path, rows, encoding: str, delimiter: str = ",") -> Path:
    """A CSV/TSV file; characters GBK lacks (a few rare place-name characters) become "?",
    as an export to GBK writes them."""
    with open(path, "w", encoding=encoding, newline="", errors="replace") as fh:
        w = csv.writer(fh, delimiter=delimiter)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def write_inline_xlsx(path: Path, rows) -> Path:
    import openpyxl

    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("pairs")
    sheet.append(HEADER)
    for r in rows:
        sheet.append(r)
    book.save(path)
    return path


_PARTS = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
        'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
        '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
        'officedocument.spreadsheetml.sheet.main+xml"/>'
        '<Override PartName="/xl/worksheets/sheet1.xml" ContentType="application/vnd.'
        'openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
        '<Override PartName="/xl/sharedStrings.xml" ContentType="application/vnd.'
        'openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"/></Types>'),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>'),
    "xl/workbook.xml": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">'
        '<sheets><sheet name="pairs" sheetId="1" r:id="rId1"/></sheets></workbook>'),
    "xl/_rels/workbook.xml.rels": (
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/worksheet" Target="worksheets/sheet1.xml"/>'
        '<Relationship Id="rId2" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
        'relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>'),
}


def write_shared_xlsx(path: Path, rows) -> Path:
    """An .xlsx as Excel writes one: every text cell an index into one shared-strings table."""
    index: dict[str, int] = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in _PARTS.items():
            z.writestr(name, text)
        with z.open("xl/worksheets/sheet1.xml", "w") as fh:
            fh.write(b'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet '
                     b'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                     + f'<dimension ref="A1:D{len(rows) + 1}"/>'.encode() + b"<sheetData>")
            for n, r in enumerate([HEADER, *rows], 1):
                cells = "".join(f'<c r="{"ABCD"[j]}{n}" t="s"><v>{index.setdefault(v, len(index))}'
                                f"</v></c>" for j, v in enumerate(r))
                fh.write(f'<row r="{n}">{cells}</row>'.encode())
            fh.write(b"</sheetData></worksheet>")
        with z.open("xl/sharedStrings.xml", "w") as fh:
            fh.write(f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><sst xmlns="http:'
                     f'//schemas.openxmlformats.org/spreadsheetml/2006/main" count="{len(index)}"'
                     f' uniqueCount="{len(index)}">'.encode())
            for text in index:
                fh.write(f"<si><t>{escape(text)}</t></si>".encode())
            fh.write(b"</sst>")
    return path


def make_files(folder: Path, rows) -> dict[str, Path]:
    return {
        "UTF-8 CSV": write_text(folder / "utf8.csv", rows, "utf-8"),
        "GBK CSV": write_text(folder / "gbk.csv", rows, "gbk"),
        "GB18030 TSV": write_text(folder / "gb18030.tsv", rows, "gb18030", "\t"),
        "xlsx (openpyxl, inline strings)": write_inline_xlsx(folder / "inline.xlsx", rows),
        "xlsx (Excel's shared strings)": write_shared_xlsx(folder / "shared.xlsx", rows),
    }


def read_all(path: Path) -> int:
    from mgeo.readers import PairReader

    with PairReader(path) as reader:
        return sum(1 for _ in reader)


def read_as_score(path: Path) -> tuple[float, float, float]:
    """(seconds to open and check the whole file, seconds to read every row after, CPU
    seconds of both), as `mgeo score` and `mgeo produce` read a file."""
    from mgeo.readers import PairReader

    c0, t0 = time.thread_time(), time.perf_counter()
    with PairReader(path) as reader:
        reader.count()
        t1 = time.perf_counter()
        for _ in reader:
            pass
    return t1 - t0, time.perf_counter() - t1, time.thread_time() - c0


def peak_mib(path: Path | None) -> float:
    """Max RSS (MiB) of a fresh process that imports the reader and reads `path` (or not)."""
    out = subprocess.run([sys.executable, __file__, "--peak", str(path or "")],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def scoring_rate(path: Path) -> float:
    """Pairs/s of `mgeo score`'s path on `path` with the bundled model on the CPU."""
    from mgeo.readers import PairReader
    from mgeo.settings import ModelSettings
    from mgeo.tools.score import score_rows
    from mgeo.worker.inference.engine import Engine

    with Engine.from_settings(ModelSettings(device="cpu")) as engine, \
            tempfile.TemporaryDirectory() as tmp, PairReader(path) as reader:
        t = time.perf_counter()
        counts = score_rows(engine, reader, Path(tmp) / "r.jsonl")
        return counts["scored"] / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--big", type=int, default=400_000)
    ap.add_argument("--score-sample", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle-rate", type=float, default=1573,
                    help="pairs/s of CPU scoring on the idle machine (the field guide's 1,573), "
                         "for the share of the extra CPU time")
    ap.add_argument("--peak", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peak is not None:
        import mgeo.readers  # noqa: F401 - the baseline imports what a read imports

        if args.peak:
            read_all(Path(args.peak))
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent (this
        # benchmark, holding every row and a model), VmHWM starts afresh with the new image.
        status = Path("/proc/self/status").read_text()
        print(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = make_rows(max(args.rows, args.big))
        small, big = folder / "small", folder / "big"
        small.mkdir()
        big.mkdir()
        files = make_files(small, rows[:args.rows])
        big_files = make_files(big, rows[:args.big])
        sample = write_text(folder / "sample.csv", rows[:args.score_sample], "utf-8")
        del rows  # millions of objects that every full garbage collection would walk
        gc.collect()
        rate = scoring_rate(sample)
        score_s = args.rows / rate
        base = peak_mib(None)
        print(f"{args.rows:,} rows; scoring them: {score_s:.1f} s at {rate:,.0f} pairs/s "
              f"(`mgeo score` path, bundled model, CPU, measured on {args.score_sample:,} "
              f"rows); {os.cpu_count()} CPUs shared with other work\n")
        print("| input | size | open + whole-file check | rows | total | extra over UTF-8 CSV | "
              "extra / CPU scoring | CPU time | extra CPU / idle CPU scoring | "
              "extra / scoring at 40k pairs/s | peak memory |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        gpu_s = args.rows / 40_000
        idle_s = args.rows / args.idle_rate
        ref = ref_cpu = None
        for name, path in files.items():
            assert read_all(path) == args.rows
            runs = [read_as_score(path) for _ in range(args.rounds)]
            check_s, read_s, _ = min(runs, key=lambda r: r[0] + r[1])
            cpu = min(r[2] for r in runs)
            total = read_s + check_s
            ref = total if ref is None else ref
            ref_cpu = cpu if ref_cpu is None else ref_cpu
            extra = total - ref
            mem = f"{peak_mib(path) - base:.0f} / {peak_mib(big_files[name]) - base:.0f} MiB"
            size = f"{path.stat().st_size / 2**20:.1f} / " \
                   f"{big_files[name].stat().st_size / 2**20:.1f} MiB"
            print(f"| {name} | {size} | {check_s:.2f} s | {read_s:.2f} s | {total:.2f} s | "
                  f"{extra:+.2f} s | {extra / score_s:+.1%} | {cpu:.2f} s | "
                  f"{(cpu - ref_cpu) / idle_s:+.1%} | {extra / gpu_s:+.0%} | {mem} |")
        print(f"\nsize and peak memory: {args.rows:,} rows / {args.big:,} rows; peak memory is "
              "a fresh process's max RSS over one that only imports the readers; CPU time: "
              "the reading thread's, open to last row (less swayed by other work than the wall "
              f"clock), its extra over UTF-8 CSV against scoring at {args.idle_rate:,.0f} "
              "pairs/s; 40k pairs/s is the field guide's estimate for an H100, not measured "
              "here")

if __name__ == "__main__":
    main()
