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
from core.settings import Settings, get_settings

from . import broker_gc, job_view, jobs, queue
from .db import session_scope
from .models import EpochMetric, Job, utcnow

log = logging.getLogger("blocklab.ingest")


def handle_event(ev: dict) -> None:
    if ev.get("type") == "worker":  # a worker's self-report (no job): kept in memory for plans
        from . import workers
        workers.store(ev)
        _fresh_worker(ev.get("worker"))
        return
    if ev.get("type") == "worker_lost":  # from the supervisor (backend/launch.py): a worker process ended
        with session_scope() as db:
            jobs.workers_gone(db, [str(ev.get("worker"))], str(ev.get("why") or "its worker process ended"),
                              get_settings().max_attempts)
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
            if kind == "started" and isinstance(ev.get("attempt"), int) and ev["attempt"] < job.attempt:
                # A superseded attempt turned up after all (its task was sent again): it must not train beside
                # the current one.
                _tell_to_stop(job, ev["attempt"])
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


def _tell_to_stop(job: Job, attempt: int | None = None) -> None:
    attempt = job.attempt if attempt is None else attempt
    try:
        queue.cancel(job.id, attempt)
    except queue.BrokerUnavailable:
        log.warning("job %s is %s, but its attempt %s started and cannot be told to stop", job.id, job.status,
                    attempt)


def _fresh_worker(report) -> None:
    """A worker's report names its process: a running job of the same worker name but another process lost its
    worker (restarted by docker's restart policy, say), so it is requeued now, not after the heartbeat timeout."""
    if not isinstance(report, dict) or not report.get("name") or not isinstance(report.get("pid"), int):
        return
    name, me = str(report["name"]), protocol.worker_label(str(report["name"]), report["pid"])
    with session_scope() as db:
        gone = db.scalars(select(Job.worker).where(Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
                                                   Job.worker.like(protocol.worker_label(name, 0)[:-1] + "%"),
                                                   Job.worker != me)).all()
        gone = [w for w in gone if protocol.worker_name(w) == name]
        if gone:
            jobs.workers_gone(db, set(gone), f"{name} was started again as pid {report['pid']}",
                              get_settings().max_attempts)


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
                jobs.requeue_lost(db, job, f"no heartbeat for {(now - last).total_seconds():.0f} s",
                                  settings.max_attempts)
                touched.append(job.id)
    return touched


class Reconciler:
    """Compares the queued jobs with the tasks the broker holds (queue.held) every `reconcile_s`, and at once after
    a reconnect: a Redis restarted without its data has forgotten every waiting task. A job missing from two
    looks in a row is sent again in its place (jobs.resend_lost): one look could fall between the commit of a new
    job and its send, or between a worker taking a task and the broker noting it taken."""

    def __init__(self, settings: Settings):
        self.every_s = settings.reconcile_s
        self._next = time.monotonic() + self.every_s
        self._missing: set[tuple[int, int]] = set()
        self.resent = 0

    def soon(self) -> None:
        self._next = 0.0

    def maybe_run(self) -> list[int]:
        if time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.every_s
        try:
            return self.run()
        except Exception:  # noqa: BLE001 - a broker that cannot be read now is read next time
            log.exception("reconcile failed; trying again in %.0f s", self.every_s)
            return []

    def run(self) -> list[int]:
        held = queue.held()
        if held is None:
            return []
        resent = []
        with session_scope() as db:
            queued = db.execute(select(Job.id, Job.attempt).where(Job.status == JobStatus.QUEUED)
                                .order_by(Job.queued_at, Job.id)).all()
            missing = [(j, a) for j, a in queued if (j, a) not in held]
            for jid, attempt in missing:  # in queue order: the resent keep their order among themselves
                job = db.get(Job, jid)
                if (jid, attempt) in self._missing and job is not None and jobs.resend_lost(db, job):
                    log.warning("job %s: the broker no longer held attempt %s; sent again in its place", jid, attempt)
                    resent.append(jid)
            self._missing = {m for m in missing if m[0] not in resent}
        self.resent += len(resent)
        return resent


class Ingestor(threading.Thread):
    def __init__(self, settings: Settings):
        super().__init__(daemon=True, name="blocklab-ingest")
        self.settings = settings
        self.stop_event = threading.Event()
        self.connected_at = utcnow()
        self.events_seen = 0
        self.gc = broker_gc.Collector(settings)  # about once a minute: keeps the broker bounded
        self.reconciler = Reconciler(settings)

    def run(self) -> None:
        topts = transport_options(self.settings.broker_url, self.settings.visibility_timeout_s)
        next_watch = 0.0
        while not self.stop_event.is_set():
            try:
                with Connection(self.settings.broker_url, transport_options=topts) as conn:
                    q = conn.SimpleQueue(EVENTS_QUEUE)
                    # Heartbeats could not arrive while the broker was away: count silence from now on.
                    self.connected_at = utcnow()
                    self.reconciler.soon()  # a broker that was away may have come back without its tasks
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
                            self.reconciler.maybe_run()
                            self.gc.maybe_run()
                    q.close()
            except Exception:  # noqa: BLE001 - broker away (Redis restart): reconnect and go on
                log.exception("event consumer: broker connection lost; reconnecting")
                self.stop_event.wait(1.0)

    def stop(self) -> None:
        self.stop_event.set()
