"""The reproduction report from the command line: `python -m backend.report_cli --group NAME [--format html|md]
[--out FILE]` (or `--jobs 1,2,3`), read from the lab's database (BLOCKLAB_HOME / BLOCKLAB_DATABASE_URL, as the
backend finds it: core/settings.py). The same report as GET /api/report.html and /api/report.md."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from backend.app import reproduction_report
from backend.app.db import migrate, session_scope


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend.report_cli", description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--group", help="a group's name: every job of its experiments")
    which.add_argument("--jobs", help="job ids separated by commas, such as 1,2,3")
    p.add_argument("--format", choices=("html", "md"), default="html",
                   help="html: one self-contained file that opens offline; md: Markdown (default: html)")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="where to write it (default: blocklab-report-<name>.<format> in the current folder; - for "
                        "stdout)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    migrate()  # an older database is read in the newest schema, as the backend reads it
    try:
        with session_scope() as db:
            r = reproduction_report.build(db, group=a.group, ids=reproduction_report.parse_ids(a.jobs) if a.jobs is not None else None)
            text = reproduction_report.to_html(r) if a.format == "html" else reproduction_report.to_markdown(r)
    except reproduction_report.ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if str(a.out) == "-":
        sys.stdout.write(text)
        return 0
    out = a.out or Path(reproduction_report.filename(r, a.format))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({len(r.runs)} jobs)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
