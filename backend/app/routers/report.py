"""GET /api/report.html and /api/report.md (?group=NAME or ?jobs=1,2,3): the reproduction report of a group or of
listed jobs, as one self-contained HTML file or as Markdown, downloaded as an attachment (backend/app/reproduction_report.py).
GET /api/depth: what a depth sweep varies (the option, from its declaration) and, with ?group=, its points."""
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import HTMLResponse, PlainTextResponse
from sqlalchemy.orm import Session

from .. import reproduction_report
from ..deps import SessionDep

router = APIRouter(prefix="/api", tags=["report"])

_GROUP = Query(None, max_length=100, description="a group's name: every job of its experiments")
_JOBS = Query(None, max_length=2000, description="job ids separated by commas, in the report's order")


def _build(db: Session, group: str | None, jobs: str | None) -> reproduction_report.Report:
    try:
        ids = reproduction_report.parse_ids(jobs) if jobs is not None else None
        return reproduction_report.build(db, group=group, ids=ids)
    except reproduction_report.ReportError as e:
        raise HTTPException(e.status, str(e)) from e


class MarkdownResponse(PlainTextResponse):
    media_type = "text/markdown"  # what the OpenAPI document then says it returns


def _attachment(name: str) -> dict:
    return {"Content-Disposition": f'attachment; filename="{name}"'}


@router.get("/report.html", response_class=HTMLResponse,
            responses={404: {"description": "no such group or job"}, 422: {"description": "a bad ask"}})
def report_html(group: str | None = _GROUP, jobs: str | None = _JOBS, db: Session = SessionDep):
    """One HTML file that opens offline: Plotly inlined, figures as data, no external URL."""
    r = _build(db, group, jobs)
    return HTMLResponse(reproduction_report.to_html(r), headers=_attachment(reproduction_report.filename(r, "html")))


@router.get("/report.md", response_class=MarkdownResponse,
            responses={404: {"description": "no such group or job"}, 422: {"description": "a bad ask"}})
def report_md(group: str | None = _GROUP, jobs: str | None = _JOBS, db: Session = SessionDep):
    r = _build(db, group, jobs)
    return MarkdownResponse(reproduction_report.to_markdown(r), headers=_attachment(reproduction_report.filename(r, "md")))


@router.get("/depth", responses={404: {"description": "no such group"}})
def depth(group: str | None = _GROUP, db: Session = SessionDep):
    """`axis`: the option a depth sweep varies, as GET /api/options serves it (the form builds the sweep's configs
    with its name, so the frontend names no option). With a group: its points (best validation accuracy, seconds
    per epoch, trainable parameters per model and depth, seeds pooled) and runs."""
    out = {"axis": reproduction_report.DEPTH.public(), "group": group, "points": [], "runs": []}
    if group is None:
        return out
    try:
        return {**out, **reproduction_report.depth_view(db, group)}
    except reproduction_report.ReportError as e:
        raise HTTPException(e.status, str(e)) from e
