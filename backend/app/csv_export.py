"""CSV downloads that a spreadsheet opens safely: text cells that start like a formula are neutralized."""
from __future__ import annotations

import csv
import io

from fastapi.responses import PlainTextResponse

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(v):
    """Numbers stay numbers; text starting with = + - @ (or a tab/CR) gets a leading quote (OWASP)."""
    if isinstance(v, str) and v.startswith(_FORMULA_START):
        return "'" + v
    return "" if v is None else v


def to_csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([safe_cell(v) for v in r])
    return buf.getvalue()


class CSVResponse(PlainTextResponse):
    media_type = "text/csv"
