"""Job life cycle on the backend: queue, cancel, force stop, resume, requeue after a lost worker (the public view
is in job_view.py).

Every status change is a conditional update on (status, attempt): of two requests that race (two resumes, a
cancel and the watchdog), exactly one changes the job and the other is told what happened instead. Only the
winner talks to the broker, so a job is never sent twice.
"""
from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import Session, selectinload

from core.protocol import ACTIVE, CANCELLABLE, RESUMABLE, JobStatus
from core.settings import get_settings

from . import job_view, queue
from .live import live
from .models import Experiment, Job, JobEvent, utcnow

# A job whose worker may not answer a cancel (busy in a long step, hung): stopped at once, the worker told to end.
FORCE_STOPPABLE = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})


class Conflict(Exception):
    """The job was not in a state that allows the change (another request got there first)."""


class Gone(Exception):
    """The job (or its experiment) was deleted while this request looked at it."""


class QueueFull(Exception):
    """Queuing these jobs would take the lab past BLOCKLAB_MAX_QUEUED_JOBS (a 429: try again later)."""


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


def _send(db: Session, job: Job, ahead: bool = False) -> None:
    """Hand the job to the broker (`ahead`: before every job that never started, see queue.py); if it is
    unreachable the job fails with a message and can be resumed."""
    commit(db, job)
    try:
        queue.dispatch(job.id, job.attempt, job.experiment.config, ahead=ahead, place=job.queued_at)
    except queue.BrokerUnavailable as e:
        if transition(db, job, {JobStatus.QUEUED}, status=JobStatus.FAILED, finished_at=utcnow(),
                      error=f"{e}. Resume the job once the broker is back."):
            record(db, job)
            commit(db, job)


def start(db: Session, experiment: Experiment) -> Job:
    """Queue a new job of an experiment, unless one of its jobs is still queued or running (resume that one)."""
    db.commit()
    job = Job(experiment=experiment, status=JobStatus.QUEUED, attempt=1, queued_at=utcnow())
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
    _check_room(db, 1)
    record(db, job)
    _send(db, job)
    return job


def start_new(db: Session, experiments: list[Experiment]) -> list[Job]:
    """Store new experiments with a queued job each, all or none: QueueFull (nothing stored) when they would take
    the lab past its limit on queued jobs. Twenty clients asking for Table 1 at once queue what fits, no more."""
    db.commit()
    new = [Job(experiment=e, status=JobStatus.QUEUED, attempt=1, queued_at=utcnow()) for e in experiments]
    db.add_all([*experiments, *new])
    db.flush()  # as in start(): the INSERTs hold SQLite's write lock, so the count sees every other start
    _check_room(db, len(new))
    for job in new:
        record(db, job)
    db.commit()
    for job in new:
        _send(db, job)
    return new


def _check_room(db: Session, adding: int) -> None:
    """Within the write transaction that inserted `adding` queued jobs: past the limit, roll back and refuse."""
    limit = get_settings().max_queued_jobs
    queued = db.scalar(select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED))
    if queued > limit:
        db.rollback()
        raise QueueFull(f"the lab already has {queued - adding} queued jobs and queues at most {limit} "
                        f"(BLOCKLAB_MAX_QUEUED_JOBS); these {adding} would pass it. Wait for queued jobs to run, "
                        "or cancel some, then try again")


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


def force_stop(db: Session, job: Job) -> Job:
    """End a running or cancelling job now, whether or not its worker answers: the job is `cancelled` at once
    (resumable like any cancelled job), and the worker is told to stop at once, ending its process if it must
    (its supervisor starts a fresh one). Whatever that attempt still sends is ignored: the job ended."""
    for _ in range(3):
        if job.status not in FORCE_STOPPABLE:
            raise Conflict(f"job {job.id} is {job.status}; force stop is for a running or cancelling job"
                           + (" (a queued job is cancelled at once: POST .../cancel)"
                              if job.status == JobStatus.QUEUED else ""))
        was = job.status
        if transition(db, job, {was}, status=JobStatus.CANCELLED, finished_at=utcnow(),
                      error=f"force-stopped by the user while {was}: the worker was told to stop at once"):
            break
    else:
        raise Conflict(f"job {job.id} kept changing; try again")
    record(db, job, note="force stop")
    commit(db, job)
    try:
        queue.cancel(job.id, job.attempt, force=True)
    except queue.BrokerUnavailable:
        pass  # the job is stopped here all the same; a worker that cannot hear it is lost to the watchdog
    return job


def resume(db: Session, job: Job) -> Job:
    """Continue a cancelled or failed job from its last checkpoint (a new attempt of the same job)."""
    if job.status not in RESUMABLE or not transition(db, job, RESUMABLE, status=JobStatus.QUEUED,
                                                     attempt=Job.attempt + 1, error=None, finished_at=None,
                                                     progress=None, queued_at=utcnow()):
        raise Conflict(f"only a cancelled or failed job can be resumed; job {job.id} is {job.status}")
    record(db, job, note="resumed")
    _send(db, job)
    return job


def requeue_lost(db: Session, job: Job, why: str, max_attempts: int) -> None:
    """A running job whose worker is gone (`why`: it went silent, or its process ended): deliver it again ahead of
    every job that never started (it had its place already), or fail it with a reason."""
    lost = (JobStatus.RUNNING, JobStatus.CANCELLING)
    if job.status == JobStatus.CANCELLING:
        changed = transition(db, job, lost, status=JobStatus.CANCELLED, finished_at=utcnow(),
                             error=f"worker lost while cancelling ({why})")
    elif job.attempt >= max_attempts:
        changed = transition(db, job, lost, status=JobStatus.FAILED, finished_at=utcnow(),
                             error=f"worker lost {job.attempt} times ({why}); giving "
                                   "up. Check the workers' logs (out of host memory? killed?), then resume the job.")
    else:
        silent_attempt = job.attempt
        # queued_at stays: the job keeps its place in the queue's order (job_view's positions, the broker's order)
        if not transition(db, job, lost, status=JobStatus.QUEUED, attempt=Job.attempt + 1, progress=None):
            return
        try:  # if that worker is only cut off, not dead, it stops instead of racing the next attempt
            queue.cancel(job.id, silent_attempt)
        except queue.BrokerUnavailable:
            pass
        record(db, job, note=f"worker lost ({why}): requeued ahead of the jobs that never started")
        _send(db, job, ahead=True)
        return
    if changed:
        record(db, job)
        commit(db, job)


def workers_gone(db: Session, labels: Iterable[str], why: str, max_attempts: int) -> list[int]:
    """Requeue (or fail) the running jobs of worker processes known to be gone (core.protocol.worker_label), at
    once instead of after the heartbeat timeout."""
    labels = list(labels)
    touched = []
    if not labels:
        return touched
    for job in db.scalars(select(Job).where(Job.status.in_(tuple(FORCE_STOPPABLE)), Job.worker.in_(labels))).all():
        requeue_lost(db, job, why, max_attempts)
        touched.append(job.id)
    return touched


def resend_lost(db: Session, job: Job) -> bool:
    """A queued job the broker no longer holds (Redis restarted without its data): sent again as a new attempt,
    in its place (ahead of the jobs sent after it was). The attempt that was lost can never run beside it: should
    it turn up after all, its `started` is stale and its worker is told to stop (ingest.py)."""
    lost_attempt = job.attempt
    if not transition(db, job, {JobStatus.QUEUED}, attempt=Job.attempt + 1):
        return False
    record(db, job, note=f"the broker lost attempt {lost_attempt}: sent again in its place")
    try:
        queue.cancel(job.id, lost_attempt)
    except queue.BrokerUnavailable:
        pass
    _send(db, job, ahead=True)
    return True


# -- the public view (job_view.py) ---------------------------------------------------------------------------------
public_many = job_view.public_many


def to_public(db: Session, job: Job) -> dict:
    views = public_many(db, [job])
    if not views:
        raise Gone(f"job {job.id} was deleted")
    return views[0]


def job_query():
    """Jobs with their experiment, loaded in the same round trip."""
    return select(Job).options(selectinload(Job.experiment))
