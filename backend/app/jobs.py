"""Job life cycle on the backend: queue, cancel, resume, requeue after a lost worker, and the public view."""
from __future__ import annotations

import statistics

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import catalogue

from . import queue
from .models import EpochMetric, Experiment, Job, JobEvent, utcnow

TERMINAL = {"cancelled", "succeeded", "failed"}


def record(db: Session, job: Job, kind: str = "status", **data) -> None:
    db.add(JobEvent(job_id=job.id, kind=kind, data={"status": job.status, "attempt": job.attempt,
                                                     "error": job.error, **data}))


def _send(db: Session, job: Job) -> None:
    """Hand the job to the broker; if it is unreachable the job fails with a message and can be resumed."""
    db.commit()
    try:
        queue.dispatch(job.id, job.attempt, job.experiment.config)
    except queue.BrokerUnavailable as e:
        job.status, job.error, job.finished_at = "failed", f"{e}. Resume the job once the broker is back.", utcnow()
        record(db, job)
        db.commit()


def start(db: Session, experiment: Experiment) -> Job:
    job = Job(experiment=experiment, status="queued", attempt=1)
    db.add(job)
    db.flush()
    record(db, job)
    _send(db, job)
    return job


def cancel(db: Session, job: Job) -> Job:
    if job.status in TERMINAL:
        return job
    if job.status == "queued":
        job.status, job.finished_at = "cancelled", utcnow()  # a queued job never starts
    else:
        job.status = "cancelling"  # the worker stops at its next check and reports "cancelled"
    record(db, job)
    db.commit()
    try:
        queue.cancel(job.id, job.attempt)
    except queue.BrokerUnavailable:
        pass  # a worker that cannot hear the cancel is either gone (watchdog) or finishes normally
    return job


def resume(db: Session, job: Job) -> Job:
    """Continue a cancelled or failed job from its last checkpoint (a new attempt of the same job)."""
    job.attempt += 1
    job.status, job.error, job.finished_at = "queued", None, None
    record(db, job, note="resumed")
    _send(db, job)
    return job


def requeue_lost(db: Session, job: Job, silent_s: float, max_attempts: int) -> None:
    """A running job whose worker stopped sending heartbeats: deliver it again, or fail it with a reason."""
    if job.status == "cancelling":
        job.status, job.finished_at = "cancelled", utcnow()
        job.error = f"worker lost while cancelling (no heartbeat for {silent_s:.0f} s)"
    elif job.attempt >= max_attempts:
        job.status, job.finished_at = "failed", utcnow()
        job.error = (f"worker lost {job.attempt} times (no heartbeat for {silent_s:.0f} s); giving up. "
                     "Check the workers' logs (out of host memory? killed?), then resume the job.")
    else:
        try:  # if that worker is only cut off, not dead, it stops instead of racing the next attempt
            queue.cancel(job.id, job.attempt)
        except queue.BrokerUnavailable:
            pass
        job.attempt += 1
        job.status = "queued"
        record(db, job, note=f"worker lost (no heartbeat for {silent_s:.0f} s): requeued")
        _send(db, job)
        return
    record(db, job)
    db.commit()


def to_public(db: Session, job: Job) -> dict:
    cfg = job.experiment.config
    spec = catalogue.get(cfg["model"])
    paper = catalogue.paper_row(spec) if spec else None
    agg = db.execute(select(func.count(EpochMetric.id), func.max(EpochMetric.val_acc))
                     .where(EpochMetric.job_id == job.id)).one()
    best_epoch = None
    if agg[1] is not None:
        best_epoch = db.scalar(select(EpochMetric.epoch).where(EpochMetric.job_id == job.id,
                                                               EpochMetric.val_acc == agg[1])
                               .order_by(EpochMetric.epoch).limit(1))
    eta = None
    if job.status == "running" and agg[0]:
        recent = db.scalars(select(EpochMetric.seconds).where(EpochMetric.job_id == job.id)
                            .order_by(EpochMetric.epoch.desc()).limit(3)).all()
        eta = statistics.mean(recent) * max(cfg["epochs"] - agg[0], 0)
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
        "epochs": cfg["epochs"], "epochs_done": agg[0], "best_val_acc": agg[1], "best_epoch": best_epoch,
        "paper_val_acc": paper["val_acc"] if paper else None,
        "trainable_params": info.get("trainable_params", spec.trainable_params if spec else None),
        "eta_s": eta, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "heartbeat_at": job.heartbeat_at, "runtime_s": runtime, "info": job.info,
    }
