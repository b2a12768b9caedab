"""Jobs: status, live events, metrics, cancel and resume."""
import asyncio
import json

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.protocol import SCALAR_METRICS, TERMINAL, JobStatus, metric_text

from .. import jobs
from ..csv_export import CSVResponse, to_csv
from ..db import session_scope
from ..deps import MAX_ID, IdPath, SessionDep, WriteAccess
from ..models import Job, JobEvent
from ..schemas import JobPublic, MetricPublic

router = APIRouter(prefix="/api/jobs", tags=["jobs"])

def _job(db: Session, job_id: int) -> Job:
    job = db.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


@router.get("", response_model=list[JobPublic])
def list_jobs(status: JobStatus | None = None, db: Session = SessionDep):
    q = jobs.job_query().order_by(Job.id.desc())
    if status:
        q = q.where(Job.status == status)
    return jobs.public_many(db, list(db.scalars(q).all()))


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: IdPath, db: Session = SessionDep):
    return jobs.to_public(db, _job(db, job_id))


@router.get("/{job_id}/metrics", response_model=list[MetricPublic])
def get_metrics(job_id: IdPath, db: Session = SessionDep):
    return [m.row() for m in _job(db, job_id).metrics]


@router.get("/{job_id}/metrics.csv", response_class=CSVResponse)
def metrics_csv(job_id: IdPath, db: Session = SessionDep):
    job = _job(db, job_id)
    rows = [m.row() for m in job.metrics]
    body = to_csv(list(SCALAR_METRICS), [[metric_text(r, c) for c in SCALAR_METRICS] for r in rows])
    return CSVResponse(body,
                       headers={"Content-Disposition": f'attachment; filename="job-{job_id}-metrics.csv"'})


@router.post("/{job_id}/cancel", response_model=JobPublic, dependencies=[WriteAccess])
def cancel_job(job_id: IdPath, db: Session = SessionDep):
    try:
        return jobs.to_public(db, jobs.cancel(db, _job(db, job_id)))
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
        return [(e.id, e.kind, e.data) for e in evs], jobs.to_public(db, job)


@router.get("/{job_id}/events")
async def job_events(job_id: IdPath, request: Request, last_event_id: int | None = Query(None, ge=0, le=MAX_ID)):
    """Server-sent events: replays stored epochs and status changes after Last-Event-ID, then streams new
    ones, with progress (epoch, batch) in between; ends after the job's final status."""
    header = request.headers.get("last-event-id", "")
    after = last_event_id if last_event_id is not None else (int(header) if header.isdigit() else 0)
    _events, job = await run_in_threadpool(_poll, job_id, after)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")

    async def stream():
        nonlocal after
        last_progress = None
        yield "retry: 1000\n\n"
        while True:
            events, job = await run_in_threadpool(_poll, job_id, after)
            for eid, kind, data in events:
                after = eid
                yield f"id: {eid}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
            progress = {**job["progress"], "status": job["status"], "eta_s": job["eta_s"],
                        "epochs": job["epochs"], "epochs_done": job["epochs_done"]}
            if progress != last_progress:
                last_progress = progress
                yield f"event: progress\ndata: {json.dumps(progress)}\n\n"
            if job["status"] in TERMINAL and not events:
                yield f"event: end\ndata: {json.dumps({'status': job['status']})}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.3)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
