"""The API's view of jobs: status and results, what it is doing now (progress by phase, place in the queue), the
config and the settings that actually ran, every attempt with its outcome, and where the time went.

A page of jobs costs a constant number of queries whatever its length: epoch statistics in one (window
functions), status records for the attempts in one, the queue order in one (only when a listed job is queued).
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from core import catalogue, estimate, palette
from core.config import OPTIONS, expected_trainable
from core.protocol import PHASE_UNITS, TERMINAL, JobStatus, Phase

from .models import EpochMetric, Experiment, Job, JobEvent, utcnow

# -- progress reports, as ingestion stores them --------------------------------------------------------------------
_OLD_PHASES = {"train": Phase.TRAINING, "val": Phase.VALIDATING}  # workers from before phases had names
_DETAIL_KEYS, _DETAIL_TEXT = 8, 200  # a phase's extras are small: what is downloaded, say
_REPORT_KEYS = ("phase", "done", "total", "epoch", "split")


def _int_or_none(v) -> int | None:
    return None if v is None or isinstance(v, bool) else int(v)


def progress_report(ev: dict) -> dict | None:
    """A worker's `progress` event as stored: core.protocol.progress's fields, plus a few small extras. The old
    form ({phase: train|val, epoch, batch, batches}) is read as training or validating batches. None: not a
    report we understand (an unknown phase, a malformed number), which ingestion drops."""
    try:
        if "done" not in ev and "batch" in ev:  # the pre-phase form
            phase = _OLD_PHASES.get(ev.get("phase"), Phase.TRAINING)
            return {"phase": phase.value, "done": int(ev["batch"]), "total": _int_or_none(ev.get("batches")),
                    "epoch": _int_or_none(ev.get("epoch")), "split": None}
        phase = Phase(ev["phase"])
        if phase == Phase.QUEUED:  # the backend's own phase: a worker never reports it
            return None
        report = {"phase": phase.value, "done": max(int(ev.get("done") or 0), 0),
                  "total": _int_or_none(ev.get("total")), "epoch": _int_or_none(ev.get("epoch")),
                  "split": None if ev.get("split") is None else str(ev["split"])[:_DETAIL_TEXT]}
    except (KeyError, ValueError, TypeError):
        return None
    envelope = {"type", "job_id", "attempt", "ts"}
    extras = [(k, v) for k, v in ev.items() if k not in envelope and k not in report
              and isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool)))]
    for k, v in extras[:_DETAIL_KEYS]:
        report[k[:40]] = v[:_DETAIL_TEXT] if isinstance(v, str) else v
    return report


def _progress(job: Job, queue: dict[int, int]) -> dict | None:
    """The job's progress with its unit: the queue position while queued, the worker's latest report while it
    runs ("starting" until the first one), none once it ended."""
    if job.status in TERMINAL:
        return None
    if job.status == JobStatus.QUEUED:
        return {"phase": Phase.QUEUED.value, "done": queue.get(job.id, 0), "total": len(queue),
                "unit": PHASE_UNITS[Phase.QUEUED], "epoch": None, "split": None}
    report = dict(job.progress or {"phase": Phase.STARTING.value, "done": 0, "total": None, "epoch": None,
                                   "split": None})
    for k in _REPORT_KEYS:
        report.setdefault(k, None)
    report["done"] = report["done"] or 0
    report["unit"] = PHASE_UNITS.get(report["phase"], "")  # a StrEnum key matches its value
    return report


def _queue_positions(db: Session, jobs: list[Job]) -> dict[int, int]:
    """Every queued job's place in the queue, 1 = next: the broker serves them in the order they were handed to
    it (created, resumed or requeued), not by id."""
    if not any(j.status == JobStatus.QUEUED for j in jobs):
        return {}
    ids = db.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.queued_at, Job.id)).all()
    return {jid: i for i, jid in enumerate(ids, 1)}


# -- epoch statistics -----------------------------------------------------------------------------------------------
@dataclass
class Stats:
    epochs_done: int = 0
    best_val_acc: float | None = None
    best_epoch: int | None = None
    recent_seconds: tuple[float, ...] = ()
    recent_epochs: tuple[tuple[int, float], ...] = ()  # (epoch, seconds) of the last three
    last_epoch_at: datetime | None = None
    first_epoch_at: datetime | None = None
    first_epoch_seconds: float | None = None
    train_s: float | None = None


def _stats(db: Session, job_ids: list[int]) -> dict[int, Stats]:
    """Epoch statistics of many jobs in one query (window functions), whatever their number."""
    if not job_ids:
        return {}
    part = {"partition_by": EpochMetric.job_id}
    by_acc = func.row_number().over(**part, order_by=(EpochMetric.val_acc.is_(None), EpochMetric.val_acc.desc(),
                                                      EpochMetric.epoch))
    by_recent = func.row_number().over(**part, order_by=EpochMetric.epoch.desc())
    by_first = func.row_number().over(**part, order_by=EpochMetric.epoch)
    inner = (select(EpochMetric.job_id, EpochMetric.epoch, EpochMetric.val_acc, EpochMetric.seconds,
                    by_acc.label("by_acc"), by_recent.label("by_recent"), by_first.label("by_first"),
                    func.count().over(**part).label("n"), func.sum(EpochMetric.seconds).over(**part).label("sum_s"),
                    func.min(EpochMetric.created_at).over(**part).label("first_at"),
                    EpochMetric.created_at.label("at"))
             .where(EpochMetric.job_id.in_(job_ids)).subquery())
    rows = db.execute(select(inner).where((inner.c.by_acc == 1) | (inner.c.by_recent <= 3)
                                          | (inner.c.by_first == 1))).all()
    out: dict[int, Stats] = {}
    for r in rows:
        s = out.setdefault(r.job_id, Stats(epochs_done=r.n, train_s=r.sum_s, first_epoch_at=r.first_at))
        if r.by_acc == 1 and r.val_acc is not None:
            s.best_val_acc, s.best_epoch = r.val_acc, r.epoch
        if r.by_recent <= 3 and r.seconds is not None:
            s.recent_seconds += (r.seconds,)
            s.recent_epochs += ((r.epoch, r.seconds),)
        if r.by_recent == 1:
            s.last_epoch_at = r.at
        if r.by_first == 1:
            s.first_epoch_seconds = r.seconds
    return out


def best_val_accs(db: Session, job_ids: list[int]) -> dict[int, float]:
    """Each job's best validation accuracy over its stored epochs, as the job view and the compare view read it
    (jobs without an epoch left out)."""
    return {i: s.best_val_acc for i, s in _stats(db, job_ids).items() if s.best_val_acc is not None}


# -- attempts, from the job's status records ------------------------------------------------------------------------
def _status_records(db: Session, job_ids: list[int]) -> dict[int, list[tuple[dict, datetime]]]:
    if not job_ids:
        return {}
    out: dict[int, list[tuple[dict, datetime]]] = defaultdict(list)
    for jid, data, at in db.execute(select(JobEvent.job_id, JobEvent.data, JobEvent.created_at)
                                    .where(JobEvent.job_id.in_(job_ids), JobEvent.kind == "status")
                                    .order_by(JobEvent.id)):
        out[jid].append((data, at))
    return out


def attempts(records: list[tuple[dict, datetime]]) -> list[dict]:
    """Each attempt's worker, device, times and outcome, oldest first. Every status change is recorded with the
    attempt it belongs to (jobs.record); an attempt that never ended but was followed by another one was lost
    (no heartbeat: the job was handed out again, the record that says so names why)."""
    by: dict[int, dict] = {}
    for data, at in records:
        n = data.get("attempt")
        if not isinstance(n, int):
            continue
        status = data.get("status")
        a = by.get(n)
        if a is None:
            prev = by.get(n - 1)
            if prev is not None and prev["outcome"] not in TERMINAL:
                prev.update(outcome="lost", ended_at=at, error=data.get("note") or "worker lost")
            a = by[n] = {"attempt": n, "worker": None, "device": None, "queued_at": at, "started_at": None,
                         "ended_at": None, "outcome": status, "error": None}
        if status == JobStatus.RUNNING and a["started_at"] is None:
            a.update(started_at=at, worker=data.get("worker"), device=data.get("device"))
        a["outcome"] = status
        if status in TERMINAL:
            a.update(ended_at=at, error=data.get("error"))
    return [by[n] for n in sorted(by)]


# -- config, settings, timings --------------------------------------------------------------------------------------
def effective_config(stored: dict[str, Any]) -> dict[str, Any]:
    """Every option as the worker runs it: the stored config (already the model's preset, or a dry run's values),
    and an option it lacks (added later, or one a browser cannot set) at its default."""
    return {o.name: stored.get(o.name, o.default) for o in OPTIONS}


_SETTINGS = ("image_size", "precision", "tf32", "device", "channels_last", "train_images", "val_images",
             "trainable_params", "total_params", "feature_cache", "resumed_from_epoch", "teacher", "torch_version",
             "timm_version", "data_fingerprint", "skipped_files")


def settings(job: Job) -> dict | None:
    """What ran, from the worker's info (sent once before the first epoch of each attempt), else from the summary
    of a finished run; None before the worker said."""
    src = job.info or job.summary
    if not src:
        return None
    out = {k: src.get(k) for k in _SETTINGS}
    if isinstance(out["feature_cache"], dict):
        out["feature_cache"] = {"reused": False, **out["feature_cache"]}
    else:
        out["feature_cache"] = None
    return out


def ran_precision(job: Job) -> str | None:
    """The precision that ran (fp32, bf16 or fp16, never "auto"), when a worker said."""
    for src in (job.info, job.summary):
        if src and src.get("precision"):
            return src["precision"]
    return None


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else round(max((b - a).total_seconds(), 0.0), 3)


def timings(job: Job, st: Stats) -> dict:
    now = utcnow()
    first_start = None
    if st.first_epoch_at is not None and st.first_epoch_seconds is not None:
        first_start = st.first_epoch_at - timedelta(seconds=st.first_epoch_seconds)
    return {"created_at": job.created_at, "started_at": job.started_at, "first_epoch_at": st.first_epoch_at,
            "finished_at": job.finished_at,
            "queued_s": _seconds(job.created_at, job.started_at or job.finished_at or now),
            "setup_s": _seconds(job.started_at, first_start) if job.started_at and first_start else None,
            "train_s": None if st.train_s is None else round(st.train_s, 3),
            "total_s": _seconds(job.created_at, job.finished_at or now)}


def eta_seconds(job: Job, st: Stats, cfg: dict[str, Any], now: datetime | None = None) -> float | None:
    """Seconds a running job has left, following its measured epochs. The epochs of a run differ in work: with the
    feature cache, an attempt's first epoch also runs the frozen pass over the validation images and one flip state
    of every training image, and with random flips each later epoch meets about half as many states not yet cached
    as the one before (epoch 2 about half the images again, epoch 3 a quarter). A mean of epoch times times the
    epochs left misses that both ways (9 s shown with 65 s left after epoch 1, 87 s with 43 s left after epoch 2).
    So: the work left, epoch by epoch as core.estimate.work counts it (for the images the worker really has), at
    the measured seconds per unit of work of the recent epochs after the attempt's first (their mix of frozen and
    training work is the nearest to the rest's), of the first alone until a later one is timed. A model without a
    FLOP figure: the mean of those epochs' times per epoch left. The current epoch's time already spent is taken
    off (at most its whole)."""
    if not st.epochs_done or not st.train_s:
        return None
    epochs = int(cfg.get("epochs", 20))
    info = job.info or {}
    first = (info.get("resumed_from_epoch") or 0) + 1  # this attempt's first epoch: it fills the cache afresh
    timed = sorted((ep, sec) for ep, sec in st.recent_epochs if sec)
    timed = [t for t in timed if t[0] > first] or timed[-1:] or [(st.epochs_done, st.train_s)]
    counted = dict(cfg)
    if info.get("train_images") and info.get("val_images"):
        classes = catalogue.num_classes(cfg.get("dataset", "cifar10"))
        counted.update(train_per_class=info["train_images"] / classes, val_limit=info["val_images"])

    def gflop(k: int) -> float:  # the work of an attempt's first k epochs
        w = estimate.work({**counted, "epochs": k})
        return w["frozen_gflop"] + w["train_gflop"] if k > 0 else 0.0

    def epoch_work(ep: int) -> float:  # epoch `ep`'s own work, counted from the start of the attempt that ran it
        k = ep - first + 1 if ep >= first else ep
        return gflop(k) - gflop(k - 1)

    try:
        s_per_gflop = sum(sec for _, sec in timed) / sum(epoch_work(ep) for ep, _ in timed)
        left = sum(epoch_work(ep) for ep in range(st.epochs_done + 1, epochs + 1)) * s_per_gflop
        nxt = epoch_work(st.epochs_done + 1) * s_per_gflop if st.epochs_done < epochs else 0.0
    except (ValueError, KeyError, TypeError, ZeroDivisionError):  # a model without FLOPs: as the recent epochs
        nxt = statistics.mean(sec for _, sec in timed)
        left = nxt * max(epochs - st.epochs_done, 0)
    if st.last_epoch_at is not None and left:
        running = max(((now or utcnow()) - st.last_epoch_at).total_seconds(), 0.0)
        left -= min(running, nxt)  # the current epoch's spent time, at most its whole
    return round(max(left, 0.0), 1)


# -- the whole view -------------------------------------------------------------------------------------------------
def _experiment_of(job: Job) -> Experiment | None:
    try:
        return job.experiment
    except InvalidRequestError:
        return None


def looks(db: Session, ids: list[int]) -> dict[int, dict]:
    """How each of these jobs is drawn (core.palette.run_look), in one query: the k-th job of its model among ALL
    the lab's jobs by id, so a run keeps its look whatever else a comparison, Fig. 2 or a report shows beside it."""
    if not ids:
        return {}
    model = func.json_extract(Experiment.config, "$.model")
    inner = (select(Job.id.label("id"), model.label("model"),
                    func.row_number().over(partition_by=model, order_by=Job.id).label("place"))
             .join(Experiment, Job.experiment_id == Experiment.id).subquery())
    rows = db.execute(select(inner.c.id, inner.c.model, inner.c.place).where(inner.c.id.in_(ids)))
    return {i: palette.run_look(m, place - 1) for i, m, place in rows}


def public_many(db: Session, jobs: list[Job]) -> list[dict]:
    """The API's view of jobs: a constant number of queries (jobs' experiments are loaded with them)."""
    jobs = [j for j in jobs if _experiment_of(j) is not None]  # one deleted while this request read
    ids = [j.id for j in jobs]
    stats, records, queue = _stats(db, ids), _status_records(db, ids), _queue_positions(db, jobs)
    drawn = looks(db, ids)
    return [_public(j, stats.get(j.id, Stats()), queue, records.get(j.id, []), drawn.get(j.id)) for j in jobs]


def _public(job: Job, st: Stats, queue: dict[int, int], records: list, look: dict | None = None) -> dict:
    cfg = job.experiment.config
    spec = catalogue.get(cfg["model"])
    paper = catalogue.paper_row(spec, cfg.get("dataset", "cifar10")) if spec else None
    eta = eta_seconds(job, st, cfg) if job.status == JobStatus.RUNNING else None
    runtime = None
    if job.started_at:
        runtime = ((job.finished_at or utcnow()) - job.started_at).total_seconds()
    info = job.info or {}
    return {
        "id": job.id, "experiment_id": job.experiment_id, "experiment_name": job.experiment.name,
        "model": cfg["model"], "status": job.status, "attempt": job.attempt, "error": job.error,
        "device": job.device, "worker": job.worker, "progress": _progress(job, queue),
        "queue_position": queue.get(job.id) if job.status == JobStatus.QUEUED else None,
        "dry_run": bool(job.experiment.dry_run),
        "epochs": cfg["epochs"], "epochs_done": st.epochs_done, "best_val_acc": st.best_val_acc,
        "best_epoch": st.best_epoch, "paper_val_acc": paper["val_acc"] if paper else None,
        "trainable_params": info.get("trainable_params", expected_trainable(cfg)),
        "eta_s": eta, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "heartbeat_at": job.heartbeat_at, "runtime_s": runtime, "info": job.info,
        "config": effective_config(cfg), "settings": settings(job), "attempts": attempts(records),
        "timings": timings(job, st), "look": look,
    }
