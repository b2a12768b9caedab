"""The wire protocol between workers and the backend: what travels over the broker (no torch, no database).

- Events, worker -> backend, on one durable queue: started, info, progress, epoch, heartbeat, finished. Each
  carries the job id and the attempt that sent it. Epoch events are idempotent (the backend stores each
  (job, epoch) once), so a worker may resend them: it replays every finished epoch from its checkpoint on start.
- Control, backend -> worker, on one queue per job attempt: cancel requests (from a user, or because the backend
  gave the job to another worker after this one went silent).
- The job statuses and the epoch row: declared here once; the backend's table, the API's response model and the
  CSV columns derive from EPOCH_ROW, and the engine builds each row with `epoch_row`.

The connections themselves (kombu) are in core/broker.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

EVENTS_QUEUE = "blocklab.events"
JOBS_QUEUE = "gpu"
TASK_NAME = "blocklab.run_job"


def worker_label(name: str, pid: int) -> str:
    """Which worker process runs an attempt (its `started` event says it; the backend keeps it on the job): the
    Celery node name and the process id. A report from the same name with another pid means a fresh process."""
    return f"{name} pid {pid}"


def worker_name(label: str) -> str:
    """The node name in a worker_label."""
    return label.rsplit(" pid ", 1)[0]


def worker_command(python: str, node: str, loglevel: str = "INFO", app: str = "worker.queue.celery_app") -> list[str]:
    """The one command line of a worker process (`make run`'s launcher, the container's entry point and the
    tests start it): Celery on the jobs queue, one job at a time, fetched one at a time; `node` names it (%h is
    the host name); `app` is the Celery app (tests name one that installs their fault hooks)."""
    return [python, "-m", "celery", "-A", app, "worker", "-Q", JOBS_QUEUE, "--pool", "solo",
            "--concurrency", "1", "--prefetch-multiplier", "1", "-n", node, "--loglevel", loglevel]


def control_queue(job_id: int, attempt: int) -> str:
    """One queue per attempt: a cancel meant for a superseded attempt never reaches the current one's worker."""
    return f"blocklab.control.job{job_id}.attempt{attempt}"


class JobStatus(StrEnum):
    """A job's life: queued -> running -> succeeded | failed | cancelled (via cancelling while it runs)."""
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class RunStatus(StrEnum):
    """How one engine run ended (its summary's "status"), beside the job's: a run that succeeded is a job that
    succeeded; a stopped run is a cancelled job; `complete` is the CLI's run that found its epochs all done."""
    SUCCEEDED = JobStatus.SUCCEEDED.value
    STOPPED = "stopped"
    COMPLETE = "complete"


JOB_STATUS_OF_RUN = {RunStatus.SUCCEEDED: JobStatus.SUCCEEDED, RunStatus.STOPPED: JobStatus.CANCELLED}

TERMINAL = frozenset({JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED})
ACTIVE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})  # a worker may still speak for it
CANCELLABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
RESUMABLE = frozenset({JobStatus.CANCELLED, JobStatus.FAILED})


# -- what a job is doing now ---------------------------------------------------------------------------------------
class Phase(StrEnum):
    """Where a job is, in order. Every phase but `queued` (the backend's: position in the queue) is reported by
    the worker in `progress` events: {"phase", "done", "total", "epoch", "split"}, `total` None when unknown."""
    QUEUED = "queued"
    STARTING = "starting"  # the worker took the job: building the model
    DOWNLOADING = "downloading"  # pretrained weights or the dataset: bytes done of total
    LOADING = "loading"  # reading the dataset into memory
    FEATURES = "features"  # the frozen part, once per image: images done of total, per split
    TRAINING = "training"  # the trainable block and head: batch of batches
    VALIDATING = "validating"  # batch of batches


PHASE_UNITS: dict[Phase, str] = {Phase.QUEUED: "position in the queue", Phase.STARTING: "", Phase.DOWNLOADING: "bytes",
                                 Phase.LOADING: "images", Phase.FEATURES: "images", Phase.TRAINING: "batches",
                                 Phase.VALIDATING: "batches"}


def progress(phase: Phase, done: int = 0, total: int | None = None, epoch: int | None = None,
             split: str | None = None, **detail: Any) -> dict:
    """One progress report, as engine callbacks pass it and `progress` events carry it. `detail` holds extras
    a phase may add (the file being downloaded: {"what": "weights of deit_base_patch16_224"})."""
    return {"phase": Phase(phase).value, "done": int(done), "total": None if total is None else int(total),
            "epoch": epoch, "split": split, **detail}


# -- the epoch row ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metric:
    """One field of an epoch's row: what the engine measures, ingestion stores, the API returns and the CSV lists."""
    name: str
    kind: str  # "int" | "float" | "vector" (per class) | "matrix" (confusion)
    help: str
    column: bool = False  # stored in a column of its own (one migration); else in the row's `extra` JSON
    digits: int | None = None  # decimals in CSV downloads
    csv: str | None = None  # its column's name in CSV downloads, where not `name`: a time says its unit (docs/csv.md)

    @property
    def scalar(self) -> bool:
        return self.kind in ("int", "float")

    @property
    def csv_name(self) -> str:
        return self.csv or self.name


EPOCH_ROW: tuple[Metric, ...] = (
    Metric("epoch", "int", "epoch number, from 1", column=True),
    Metric("train_loss", "float", "mean training loss (with label smoothing when set; with a teacher, the distillation loss: half the "
           "labels' cross-entropy, half the teacher term)", column=True, digits=5),
    Metric("train_acc", "float", "training accuracy (dropout on, as Keras reports it)", column=True, digits=4),
    Metric("val_loss", "float", "validation cross-entropy, plain: comparable across models", column=True, digits=5),
    Metric("val_acc", "float", "validation accuracy on the dataset's test set", column=True, digits=4),
    Metric("lr", "float", "learning rate used in this epoch", column=True),
    Metric("seconds", "float", "wall time of the epoch, training and validation", column=True, digits=3,
           csv="epoch_time_s"),
    Metric("train_seconds", "float", "wall time of the training part", digits=3, csv="train_time_s"),
    Metric("images_per_s", "float", "training images per second", column=True, digits=2),
    Metric("keras_train_loss", "float", "with head_l2 on: mean of cross-entropy plus the L2 penalty, the training "
           "loss Keras prints (the authors' logs); null when off", digits=5),
    Metric("keras_val_loss", "float", "with head_l2 on: validation cross-entropy plus the L2 penalty, the val_loss "
           "Keras prints; null when off", digits=5),
    Metric("teacher_acc", "float", "with a teacher: the teacher's accuracy on the training images as this epoch "
           "saw them (flips included); null without one", digits=4),
    Metric("teacher_agreement", "float", "with a teacher: the fraction of this epoch's training images where the "
           "student's prediction equals the teacher's; null without one", digits=4),
    Metric("per_class_acc", "vector", "validation accuracy per class", column=True),
    Metric("confusion", "matrix", "validation confusion matrix, rows true, columns predicted", column=True),
)
METRICS: dict[str, Metric] = {m.name: m for m in EPOCH_ROW}
SCALAR_METRICS: tuple[str, ...] = tuple(m.name for m in EPOCH_ROW if m.scalar)


def epoch_row(**values: Any) -> dict:
    """The row an epoch event carries, checked against EPOCH_ROW. Strict JSON: a non-finite number (a diverged
    loss) travels as null, and `nonfinite` says what it was ({"train_loss": "NaN"})."""
    unknown = sorted(set(values) - set(METRICS))
    missing = sorted(set(METRICS) - set(values))
    if unknown or missing:
        raise ValueError(f"epoch row does not match the protocol: unknown {unknown}, missing {missing}")
    row, nonfinite = {}, {}
    for name, v in values.items():
        if isinstance(v, float) and not math.isfinite(v):
            nonfinite[name] = "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
            v = None
        row[name] = v
    row["nonfinite"] = nonfinite or None
    return row


def scalar_view(row: dict) -> dict:
    """The scalar metrics of a row (what status events and CSV downloads carry)."""
    return {k: row.get(k) for k in SCALAR_METRICS} | ({"nonfinite": row["nonfinite"]} if row.get("nonfinite") else {})


def metric_text(row: dict, name: str):
    """A metric for a CSV cell: rounded to its declared digits, a non-finite value spelled out ("NaN")."""
    nonfinite = (row.get("nonfinite") or {}).get(name)
    if nonfinite:
        return nonfinite
    v, digits = row.get(name), METRICS[name].digits
    return round(v, digits) if digits is not None and isinstance(v, float) else v
