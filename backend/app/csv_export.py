"""CSV downloads that a spreadsheet opens safely: text cells are quoted, and anything in them that a spreadsheet
could read as the start of a formula is neutralized, also after a `,`, `;` or tab: a spreadsheet that splits on a
different separator than ours (or ignores the quotes) would otherwise start a new cell there."""
from __future__ import annotations

import csv
import io
import re

from fastapi.responses import PlainTextResponse

# A formula character (OWASP: = + - @, and tab/CR) at the start of the text or of any piece a spreadsheet may split
# off (after , ; tab or a line break), perhaps after spaces it trims.
_FORMULA = re.compile(r"(^|[,;\t\r\n])([ ]*)(?=[=+\-@\t\r])")


TRUE, FALSE = "true", "false"  # every boolean in every CSV (docs/csv.md)


def safe_cell(v):
    """Numbers stay numbers, booleans are `true`/`false`; in text, each formula-like start gets a leading quote
    (OWASP's neutralization)."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return TRUE if v else FALSE
    if isinstance(v, str):
        return _FORMULA.sub(r"\1\2'", v)
    return v


def tidy(v):
    """A float no declaration rounds, at 6 significant digits: values that passed through float32 (a learning
    rate of 7.999999797903001e-05) read as they were meant (8e-05). Anything else as it is."""
    return float(f"{v:.6g}") if isinstance(v, float) else v


def to_csv(header: list[str], rows: list[list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, quoting=csv.QUOTE_NONNUMERIC)  # text always quoted, numbers bare
    w.writerow([safe_cell(h) for h in header])
    for r in rows:
        w.writerow([safe_cell(v) for v in r])
    return buf.getvalue()


class CSVResponse(PlainTextResponse):
    media_type = "text/csv"
