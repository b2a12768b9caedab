"""Consumes worker events from the broker into the database, and watches for jobs whose worker died.

Runs as a thread in the backend process. An event is acknowledged only after its transaction commits, so a
backend restart never loses one (it waits in the broker); each (job, epoch) is stored once, so a replayed or
redelivered epoch is never stored twice.
"""
from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta

from kombu import Connection
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core import protocol
from core.broker import transport_options
from core.protocol import ACTIVE, EVENTS_QUEUE, TERMINAL, JobStatus, Phase, scalar_view
from core.settings import Settings

from . import broker_gc, job_view, jobs, queue
from .db import session_scope
from .models import EpochMetric, Job, utcnow

log = logging.getLogger("blocklab.ingest")


def handle_event(ev: dict) -> None:
    if ev.get("type") == "worker":  # a worker's self-report (no job): kept in memory for plans
        from . import workers
        workers.store(ev)
        return
    with session_scope() as db:
        job = db.get(Job, int(ev.get("job_id", 0)))
        if job is None:
            return
        kind, current = ev.get("type"), ev.get("attempt") == job.attempt
        if kind == "epoch":
            _store_epoch(db, job, ev["row"], sent_at=ev.get("ts"))
            return
        if not current:
            return  # a stale attempt (requeued since) no longer speaks for the job
        now = utcnow()
        if kind in ("heartbeat", "progress", "info", "started") and job.status in ACTIVE:
            job.heartbeat_at = now
        if kind == "started" and job.status == JobStatus.QUEUED:
            if jobs.transition(db, job, {JobStatus.QUEUED}, status=JobStatus.RUNNING, worker=ev.get("worker"),
                               device=ev.get("device"), started_at=job.started_at or now, error=None,
                               progress=protocol.progress(Phase.STARTING)):
                jobs.record(db, job, worker=job.worker, device=job.device)
        elif kind == "started" and job.status in TERMINAL:
            # This attempt ended here first (cancelled while queued, force-stopped, then delivered again after
            # its worker died): the worker must not train a job nobody waits for.
            _tell_to_stop(job)
        elif kind == "progress" and job.status in (JobStatus.RUNNING, JobStatus.CANCELLING):
            report = job_view.progress_report(ev)
            if report is not None:
                job.progress = report
        elif kind == "info":
            job.info = ev["info"]
        elif kind == "finished" and job.status not in TERMINAL:
            if jobs.transition(db, job, ACTIVE, status=JobStatus(ev["status"]), error=ev.get("error"),
                               summary=ev.get("summary"), finished_at=now):
                jobs.record(db, job)
        jobs.commit(db, job)


def _tell_to_stop(job: Job) -> None:
    try:
        queue.cancel(job.id, job.attempt)
    except queue.BrokerUnavailable:
        log.warning("job %s is %s, but its attempt %s started and cannot be told to stop", job.id, job.status,
                    job.attempt)


def _store_epoch(db, job: Job, row: dict, sent_at: float | None = None) -> None:
    exists = db.scalar(select(EpochMetric.id).where(EpochMetric.job_id == job.id,
                                                    EpochMetric.epoch == row["epoch"]))
    if exists:
        return
    if job.status in TERMINAL:  # a worker still training a job that ended (a zombie attempt): not its history
        log.warning("job %s is %s already: a late epoch %s not stored", job.id, job.status, row["epoch"])
        return
    db.add(EpochMetric.from_row(job.id, row))
    # delay_s: from the worker sending the epoch to the backend storing it (same clock on one machine).
    delay = round(time.time() - sent_at, 3) if sent_at else None
    jobs.record(db, job, kind="epoch", epoch=row["epoch"], delay_s=delay, row=scalar_view(row))
    try:
        jobs.commit(db, job)
    except IntegrityError:  # another ingestor stored it first
        db.rollback()


def check_heartbeats(settings: Settings, since: datetime) -> list[int]:
    """Requeue (or fail) running jobs silent for longer than the timeout. `since` is when this backend last
    (re)connected to the broker: while either was down no heartbeat could arrive, so silence counts from then."""
    now = utcnow()
    limit = timedelta(seconds=settings.heartbeat_timeout_s)
    touched = []
    with session_scope() as db:
        for job in db.scalars(select(Job).where(Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)))).all():
            last = max(t for t in (job.heartbeat_at, job.started_at, since) if t is not None)
            if now - last > limit:
                log.warning("job %s: no heartbeat for %.0f s", job.id, (now - last).total_seconds())
                jobs.requeue_lost(db, job, (now - last).total_seconds(), settings.max_attempts)
                touched.append(job.id)
    return touched


class Ingestor(threading.Thread):
    def __init__(self, settings: Settings):
        super().__init__(daemon=True, name="blocklab-ingest")
        self.settings = settings
        self.stop_event = threading.Event()
        self.connected_at = utcnow()
        self.events_seen = 0
        self.gc = broker_gc.Collector(settings)  # about once a minute: keeps the broker bounded

    def run(self) -> None:
        topts = transport_options(self.settings.broker_url, self.settings.visibility_timeout_s)
        next_watch = 0.0
        while not self.stop_event.is_set():
            try:
                with Connection(self.settings.broker_url, transport_options=topts) as conn:
                    q = conn.SimpleQueue(EVENTS_QUEUE)
                    # Heartbeats could not arrive while the broker was away: count silence from now on.
                    self.connected_at = utcnow()
                    drained = False
                    while not self.stop_event.is_set():
                        try:
                            msg = q.get(block=True, timeout=0.5)
                        except q.Empty:
                            drained = True
                        else:
                            handle_event(msg.payload)
                            msg.ack()
                            self.events_seen += 1
                            continue
                        # Only once the backlog is in: a heartbeat may be waiting in it.
                        if drained and time.monotonic() >= next_watch:
                            next_watch = time.monotonic() + 1.0
                            check_heartbeats(self.settings, self.connected_at)
                            self.gc.maybe_run()
                    q.close()
            except Exception:  # noqa: BLE001 - broker away (Redis restart): reconnect and go on
                log.exception("event consumer: broker connection lost; reconnecting")
                self.stop_event.wait(1.0)

    def stop(self) -> None:
        self.stop_event.set()
