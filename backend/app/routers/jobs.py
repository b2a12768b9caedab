"""Jobs: status, live events, metrics, cancel, force stop and resume."""
import asyncio
import json
from typing import Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.config import TrainConfig, method_card, preset, web_options
from core.protocol import METRICS, SCALAR_METRICS, TERMINAL, JobStatus, metric_text
from core.settings import get_settings

from .. import job_view, jobs
from ..csv_export import CSVResponse, tidy, to_csv
from ..db import session_scope
from ..deps import MAX_ID, IdPath, SessionDep, WriteAccess
from ..live import TooManyStreams, live
from ..models import Experiment, Job, JobEvent
from ..schemas import JobPublic, MetricPublic, ModelCard

router = APIRouter(prefix="/api/jobs", tags=["jobs"])


def _job(db: Session, job_id: int) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


@router.get("", response_model=list[JobPublic])
def list_jobs(status: JobStatus | None = None,
              archived: Literal["false", "true", "all"] = Query(
                  "false", description="jobs of archived experiments: false hides them, true shows only them, all "
                                       "shows both"),
              db: Session = SessionDep):
    q = jobs.job_query().order_by(Job.id.desc())
    if status:
        q = q.where(Job.status == status)
    if archived != "all":
        q = q.join(Job.experiment).where(Experiment.archived == (archived == "true"))
    return jobs.public_many(db, list(db.scalars(q).all()))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: IdPath, db: Session = SessionDep):
    return jobs.to_public(db, _job(db, job_id))


@router.get("/{job_id}/card", response_model=ModelCard, responses={404: {"description": "no such job or card"}})
def get_card(job_id: IdPath, db: Session = SessionDep):
    """The job's method card, with what its worker reported when it built the model (job.info): for a timm model
    outside the catalogue, where the generic last-block rule cut and how many parameters train."""
    job = _job(db, job_id)
    cfg = TrainConfig.from_dict(job_view.effective_config(job.experiment.config))
    web = {o.name for o in web_options()}
    paper = {k: v for k, v in preset("paper", model=cfg.model).to_dict().items() if k in web}
    try:
        card = method_card(cfg, built=job.info if isinstance(job.info, dict) else None)
    except ValueError as e:  # a stored model this lab's timm list no longer has
        raise HTTPException(404, f"job {job_id} has no method card: {e}") from e
    return {**card, "config": paper}


@router.get("/{job_id}/metrics", response_model=list[MetricPublic])
def get_metrics(job_id: IdPath, db: Session = SessionDep):
    return [m.row() for m in _job(db, job_id).metrics]


@router.get("/{job_id}/metrics.csv", response_class=CSVResponse)
def metrics_csv(job_id: IdPath, db: Session = SessionDep):
    job = _job(db, job_id)
    rows = [m.row() for m in job.metrics]
    # Every row says what ran (the precision, never "auto") and whether it was a dry run, so a file on its own
    # cannot pass for a paper run.
    ran = job_view.ran_precision(job) or job_view.effective_config(job.experiment.config)["precision"]
    run = [None if ran == "auto" else ran, bool(job.experiment.dry_run)]
    body = to_csv([*(METRICS[c].csv_name for c in SCALAR_METRICS), "precision", "dry_run"],
                  [[*(tidy(metric_text(r, c)) for c in SCALAR_METRICS), *run] for r in rows])
    return CSVResponse(body,
                       headers={"Content-Disposition": f'attachment; filename="job-{job_id}-metrics.csv"'})


@router.post("/{job_id}/cancel", response_model=JobPublic, dependencies=[WriteAccess])
def cancel_job(job_id: IdPath, db: Session = SessionDep):
    try:
        return jobs.to_public(db, jobs.cancel(db, _job(db, job_id)))
    except jobs.Conflict as e:
        raise HTTPException(409, str(e)) from e


@router.post("/{job_id}/force-stop", response_model=JobPublic, dependencies=[WriteAccess],
             responses={409: {"description": "the job is not running or cancelling"}})
def force_stop_job(job_id: IdPath, db: Session = SessionDep):
    """Stop a running or cancelling job now: it becomes `cancelled` at once (resumable), and its worker is told
    to stop at once, ending its process if it must (the worker's supervisor starts a fresh one)."""
    try:
        return jobs.to_public(db, jobs.force_stop(db, _job(db, job_id)))
    except jobs.Conflict as e:
        raise HTTPException(409, str(e)) from e


@router.post("/{job_id}/resume", response_model=JobPublic, dependencies=[WriteAccess])
def resume_job(job_id: IdPath, db: Session = SessionDep):
    try:
        return jobs.to_public(db, jobs.resume(db, _job(db, job_id)))
    except jobs.Conflict as e:
        raise HTTPException(409, str(e)) from e


def _poll(job_id: int, after: int) -> tuple[list[tuple[int, str, dict]], dict | None]:
    with session_scope() as db:
        job = db.get(Job, job_id)
        if job is None:
            return [], None
        evs = db.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after)
                         .order_by(JobEvent.id).limit(500)).all()
        views = jobs.public_many(db, [job])  # empty when the job was deleted meanwhile
        return [(e.id, e.kind, e.data) for e in evs], (views[0] if views else None)


def _strict_json(data) -> str:
    """Events are strict JSON: a stray non-finite number (from an old row, say) goes out as null."""
    try:
        return json.dumps(data, allow_nan=False)
    except ValueError:
        return json.dumps(json.loads(json.dumps(data), parse_constant=lambda _c: None), allow_nan=False)


def _last_event_id(query: int | None, header: str) -> int:
    """The Last-Event-ID an EventSource sends back on reconnect; anything but a plain id means "from the start"."""
    if query is not None:
        return query
    if header.isascii() and header.isdigit() and len(header) <= 19 and int(header) <= MAX_ID:
        return int(header)
    return 0


def progress_event(job: dict) -> dict:
    """A stream's `progress` event: the job's `progress` object (null once it ended) under "progress" and, for
    readers of the flat form, its fields at the top level too; with what a live view updates beside it."""
    p = job["progress"]
    return {**(p or {}), "progress": p, "status": job["status"], "eta_s": job["eta_s"], "epochs": job["epochs"],
            "epochs_done": job["epochs_done"], "queue_position": job["queue_position"]}


class _Stream(StreamingResponse):
    """An event stream that gives back its place however it ends (finished, client gone, cancelled)."""

    def __init__(self, body, release, **kw):
        super().__init__(body, **kw)
        self._release = release

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


@router.get("/{job_id}/events", responses={429: {"description": "too many event streams open"}})
async def job_events(job_id: IdPath, request: Request, last_event_id: int | None = Query(None, ge=0, le=MAX_ID)):
    """Server-sent events: replays stored epochs and status changes after Last-Event-ID, then streams new
    ones, with `progress` events (progress_event) in between; ends after the job's final status. The stream sleeps until
    the job changes (live.py), with a keep-alive comment when idle."""
    after = _last_event_id(last_event_id, request.headers.get("last-event-id", ""))
    _events, job = await run_in_threadpool(_poll, job_id, after)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    s = get_settings()
    client = request.client.host if request.client else "?"
    slot = live.slot(client, s.max_streams, s.max_streams_per_client)
    try:
        slot.__enter__()
    except TooManyStreams as e:
        raise HTTPException(429, str(e)) from e

    async def stream():
        nonlocal after
        last_progress = None
        deadline = asyncio.get_running_loop().time() + s.stream_max_s
        yield "retry: 1000\n\n"
        while True:
            seen = live.version(job_id)  # before the read: a change committed during it is not missed
            events, job = await run_in_threadpool(_poll, job_id, after)
            if job is None:  # deleted while watched
                yield f"event: end\ndata: {_strict_json({'status': 'deleted'})}\n\n"
                return
            for eid, kind, data in events:
                after = eid
                yield f"id: {eid}\nevent: {kind}\ndata: {_strict_json(data)}\n\n"
            progress = progress_event(job)
            if progress != last_progress:
                last_progress = progress
                yield f"event: progress\ndata: {_strict_json(progress)}\n\n"
            if job["status"] in TERMINAL and not events:
                yield f"event: end\ndata: {_strict_json({'status': job['status']})}\n\n"
                return
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return  # the browser reconnects with Last-Event-ID
            if not events and not await live.wait(job_id, min(s.stream_keepalive_s, left), seen):
                yield ": keep-alive\n\n"

    return _Stream(stream(), lambda: slot.__exit__(None, None, None), media_type="text/event-stream",
                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
