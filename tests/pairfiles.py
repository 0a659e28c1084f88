"""Pair files as ETL teams hand them over, for the tests of readers and commands: Chinese
headers, any encoding, CSV/TSV or an Excel sheet."""

from __future__ import annotations

import csv
from pathlib import Path

PAIRS = [("紫萱路363号人力社保局", "紫萱路363号市人社局"),
         ("栖霞区仙林街道文枢东路2号商住楼4楼", "栖霞区文枢东路2号书店"),
         ("浙江省杭州市西湖区文三路90号", "杭州市文三路90号东部软件园"),
         ("广东省深圳市南山区科技园南区", "深圳南山科技园")]
HEADER = ["编号", "地址1", "地址2", "城市"]


def rows(n: int = 4, extra: str = "") -> list[list[str]]:
    """`n` rows of HEADER: ids 1..n, `extra` appended to each first address."""
    return [[f"{i + 1}", PAIRS[i % 4][0] + extra, PAIRS[i % 4][1], "南京"] for i in range(n)]


def table(path: Path, body, header=HEADER, encoding="utf-8", delimiter=",") -> Path:
    with open(path, "w", encoding=encoding, newline="") as fh:
        csv.writer(fh, delimiter=delimiter).writerows([header, *body])
    return path


def workbook(path: Path, body, header=HEADER) -> Path:
    """An .xlsx of `body` with its ids as numbers, as a spreadsheet keeps them."""
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(header)
    for r in body:
        sheet.append([int(r[0]), *r[1:]])
    book.save(path)
    return path
