"""Job life cycle on the backend: queue, cancel, resume, requeue after a lost worker, and the public view.

Every status change is a conditional update on (status, attempt): of two requests that race (two resumes, a
cancel and the watchdog), exactly one changes the job and the other is told what happened instead. Only the
winner talks to the broker, so a job is never sent twice.
"""
from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import Session, selectinload

from core import catalogue
from core.protocol import ACTIVE, CANCELLABLE, RESUMABLE, JobStatus

from . import queue
from .live import live
from .models import EpochMetric, Experiment, Job, JobEvent, utcnow


class Conflict(Exception):
    """The job was not in a state that allows the change (another request got there first)."""


class Gone(Exception):
    """The job (or its experiment) was deleted while this request looked at it."""


def record(db: Session, job: Job, kind: str = "status", **data) -> None:
    db.add(JobEvent(job_id=job.id, kind=kind, data={"status": job.status, "attempt": job.attempt,
                                                     "error": job.error, **data}))


def transition(db: Session, job: Job, when: Iterable[JobStatus], **values) -> bool:
    """Set `values` on the job if it is still in one of `when`, at the attempt we saw; False if it was not."""
    jid, seen = job.id, job.attempt
    db.commit()  # start from a fresh transaction: the condition is checked against the newest row
    res = db.execute(update(Job).where(Job.id == jid, Job.status.in_(tuple(when)), Job.attempt == seen)
                     .values(**values).execution_options(synchronize_session=False))
    if res.rowcount != 1:
        db.rollback()
        try:
            db.refresh(job)
        except InvalidRequestError as e:  # deleted meanwhile
            raise Gone(f"job {jid} was deleted") from e
        return False
    db.refresh(job)
    return True


def commit(db: Session, job: Job) -> None:
    """Commit, then wake the job's event streams (they read what was committed)."""
    db.commit()
    live.changed(job.id)


def _send(db: Session, job: Job) -> None:
    """Hand the job to the broker; if it is unreachable the job fails with a message and can be resumed."""
    commit(db, job)
    try:
        queue.dispatch(job.id, job.attempt, job.experiment.config)
    except queue.BrokerUnavailable as e:
        if transition(db, job, {JobStatus.QUEUED}, status=JobStatus.FAILED, finished_at=utcnow(),
                      error=f"{e}. Resume the job once the broker is back."):
            record(db, job)
            commit(db, job)


def start(db: Session, experiment: Experiment) -> Job:
    """Queue a new job of an experiment, unless one of its jobs is still queued or running (resume that one)."""
    db.commit()
    job = Job(experiment=experiment, status=JobStatus.QUEUED, attempt=1)
    db.add(job)
    try:
        db.flush()  # the INSERT holds SQLite's write lock until commit: the count below sees every other start
    except IntegrityError as e:
        db.rollback()
        raise Gone(f"experiment {experiment.id} was deleted") from e
    active = db.scalars(select(Job.id).where(Job.experiment_id == experiment.id, Job.status.in_(tuple(ACTIVE)),
                                             Job.id != job.id)).first()
    if active is not None:
        db.rollback()
        raise Conflict(f"job {active} of this experiment is still queued or running: cancel it, or wait")
    record(db, job)
    _send(db, job)
    return job


def cancel(db: Session, job: Job) -> Job:
    for _ in range(3):  # queued -> cancelled and running -> cancelling race only with the job's own progress
        if job.status not in CANCELLABLE:
            raise Conflict(f"job {job.id} is {job.status}; only a queued or running job can be cancelled")
        queued = job.status == JobStatus.QUEUED
        # A queued job never starts; a running one stops at its next check and reports "cancelled".
        values = ({"status": JobStatus.CANCELLED, "finished_at": utcnow()} if queued
                  else {"status": JobStatus.CANCELLING})
        if transition(db, job, {job.status}, **values):
            break
    else:
        raise Conflict(f"job {job.id} kept changing; try again")
    record(db, job)
    commit(db, job)
    try:
        queue.cancel(job.id, job.attempt)
    except queue.BrokerUnavailable:
        pass  # a worker that cannot hear the cancel is either gone (watchdog) or finishes normally
    return job


def resume(db: Session, job: Job) -> Job:
    """Continue a cancelled or failed job from its last checkpoint (a new attempt of the same job)."""
    if job.status not in RESUMABLE or not transition(db, job, RESUMABLE, status=JobStatus.QUEUED,
                                                     attempt=Job.attempt + 1, error=None, finished_at=None):
        raise Conflict(f"only a cancelled or failed job can be resumed; job {job.id} is {job.status}")
    record(db, job, note="resumed")
    _send(db, job)
    return job


def requeue_lost(db: Session, job: Job, silent_s: float, max_attempts: int) -> None:
    """A running job whose worker stopped sending heartbeats: deliver it again, or fail it with a reason."""
    lost = (JobStatus.RUNNING, JobStatus.CANCELLING)
    if job.status == JobStatus.CANCELLING:
        changed = transition(db, job, lost, status=JobStatus.CANCELLED, finished_at=utcnow(),
                             error=f"worker lost while cancelling (no heartbeat for {silent_s:.0f} s)")
    elif job.attempt >= max_attempts:
        changed = transition(db, job, lost, status=JobStatus.FAILED, finished_at=utcnow(),
                             error=f"worker lost {job.attempt} times (no heartbeat for {silent_s:.0f} s); giving "
                                   "up. Check the workers' logs (out of host memory? killed?), then resume the job.")
    else:
        silent_attempt = job.attempt
        if not transition(db, job, lost, status=JobStatus.QUEUED, attempt=Job.attempt + 1):
            return
        try:  # if that worker is only cut off, not dead, it stops instead of racing the next attempt
            queue.cancel(job.id, silent_attempt)
        except queue.BrokerUnavailable:
            pass
        record(db, job, note=f"worker lost (no heartbeat for {silent_s:.0f} s): requeued")
        _send(db, job)
        return
    if changed:
        record(db, job)
        commit(db, job)


# -- the public view ----------------------------------------------------------------------------------------------
@dataclass
class _Stats:
    epochs_done: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    recent_seconds: tuple[float, ...] = ()


def _stats(db: Session, job_ids: list[int]) -> dict[int, _Stats]:
    """Epoch statistics of many jobs in one query (window functions), whatever their number."""
    if not job_ids:
        return {}
    by_acc = func.row_number().over(partition_by=EpochMetric.job_id,
                                    order_by=(EpochMetric.val_acc.is_(None), EpochMetric.val_acc.desc(),
                                              EpochMetric.epoch))
    by_recent = func.row_number().over(partition_by=EpochMetric.job_id, order_by=EpochMetric.epoch.desc())
    count = func.count().over(partition_by=EpochMetric.job_id)
    inner = (select(EpochMetric.job_id, EpochMetric.epoch, EpochMetric.val_acc, EpochMetric.seconds,
                    by_acc.label("by_acc"), by_recent.label("by_recent"), count.label("n"))
             .where(EpochMetric.job_id.in_(job_ids)).subquery())
    rows = db.execute(select(inner).where((inner.c.by_acc == 1) | (inner.c.by_recent <= 3))).all()
    out: dict[int, _Stats] = {}
    for r in rows:
        s = out.setdefault(r.job_id, _Stats(epochs_done=r.n))
        if r.by_acc == 1 and r.val_acc is not None:
            s.best_val_acc, s.best_epoch = r.val_acc, r.epoch
        if r.by_recent <= 3 and r.seconds is not None:
            s.recent_seconds += (r.seconds,)
    return out


def public_many(db: Session, jobs: list[Job]) -> list[dict]:
    """The API's view of jobs: a constant number of queries (jobs' experiments are loaded with them)."""
    jobs = [j for j in jobs if _experiment_of(j) is not None]  # one deleted while this request read
    stats = _stats(db, [j.id for j in jobs])
    return [_public(j, stats.get(j.id, _Stats())) for j in jobs]


def _experiment_of(job: Job) -> Experiment | None:
    try:
        return job.experiment
    except InvalidRequestError:
        return None


def to_public(db: Session, job: Job) -> dict:
    views = public_many(db, [job])
    if not views:
        raise Gone(f"job {job.id} was deleted")
    return views[0]


def job_query():
    """Jobs with their experiment, loaded in the same round trip."""
    return select(Job).options(selectinload(Job.experiment))


def _public(job: Job, st: _Stats) -> dict:
    cfg = job.experiment.config
    spec = catalogue.get(cfg["model"])
    paper = catalogue.paper_row(spec) if spec else None
    eta = None
    if job.status == JobStatus.RUNNING and st.recent_seconds:
        eta = statistics.mean(st.recent_seconds) * max(cfg["epochs"] - st.epochs_done, 0)
    runtime = None
    if job.started_at:
        runtime = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
    info = job.info or {}
    return {
        "id": job.id, "experiment_id": job.experiment_id, "experiment_name": job.experiment.name,
        "model": cfg["model"], "status": job.status, "attempt": job.attempt, "error": job.error,
        "device": job.device, "worker": job.worker,
        "progress": {"phase": job.phase, "epoch": job.progress_epoch, "batch": job.progress_batch,
                     "batches": job.progress_batches},
        "epochs": cfg["epochs"], "epochs_done": st.epochs_done, "best_val_acc": st.best_val_acc,
        "best_epoch": st.best_epoch, "paper_val_acc": paper["val_acc"] if paper else None,
        "trainable_params": info.get("trainable_params", spec.trainable_params if spec else None),
        "eta_s": eta, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "heartbeat_at": job.heartbeat_at, "runtime_s": runtime, "info": job.info,
    }
