"""Database tables: experiments (a name and the engine's config), jobs (one run of an experiment), the
per-epoch metrics they report (one row per job and epoch, never two), and the job events that event streams
replay."""
from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from core.protocol import EPOCH_ROW, JobStatus

from .db import Base


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # SQLite keeps no zone: store naive UTC


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = {"sqlite_autoincrement": True}  # ids are never reused after a delete (see 0004)
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    group: Mapped[str | None] = mapped_column(String(100), index=True)
    config: Mapped[dict] = mapped_column(JSON)
    archived: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # core.config.DRY_RUN was applied over its config: a labelled check of the pipeline, never a paper run
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    jobs: Mapped[list[Job]] = relationship(back_populates="experiment", order_by="Job.id")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = {"sqlite_autoincrement": True}  # a deleted job's leftover messages never reach a new one
    id: Mapped[int] = mapped_column(primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default=JobStatus.QUEUED, index=True)
    attempt: Mapped[int] = mapped_column(Integer, default=1)  # bumped on every (re)delivery the backend makes
    error: Mapped[str | None] = mapped_column(Text)
    device: Mapped[str | None] = mapped_column(String(200))
    worker: Mapped[str | None] = mapped_column(String(200))
    # The current attempt's latest progress report (core.protocol.progress: phase, done, total, epoch, split)
    progress: Mapped[dict | None] = mapped_column(JSON)
    info: Mapped[dict | None] = mapped_column(JSON)
    summary: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When it was last handed to the broker (created, resumed, requeued): the queue serves jobs in this order
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    experiment: Mapped[Experiment] = relationship(back_populates="jobs")
    metrics: Mapped[list[EpochMetric]] = relationship(order_by="EpochMetric.epoch")


_COLUMN_TYPES = {"int": Integer, "float": Float, "vector": JSON, "matrix": JSON}


class _EpochColumns:
    """The epoch row's own columns, one per metric that EPOCH_ROW marks `column` (a new one needs a migration).
    Nullable: a diverged epoch's loss is stored as NULL and named in `extra["nonfinite"]`."""


for _m in EPOCH_ROW:
    if _m.column and _m.name != "epoch":
        setattr(_EpochColumns, _m.name, mapped_column(_COLUMN_TYPES[_m.kind], nullable=True))


class EpochMetric(_EpochColumns, Base):
    __tablename__ = "epoch_metrics"
    __table_args__ = (UniqueConstraint("job_id", "epoch", name="uq_job_epoch"), {"sqlite_autoincrement": True})
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    extra: Mapped[dict | None] = mapped_column(JSON)  # the row's other metrics, and `nonfinite`
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @classmethod
    def from_row(cls, job_id: int, row: dict) -> EpochMetric:
        own = {m.name for m in EPOCH_ROW if m.column}
        extra = {k: v for k, v in row.items() if k not in own and v is not None}
        return cls(job_id=job_id, **{k: row.get(k) for k in own}, extra=extra or None)

    def row(self) -> dict:
        """The epoch's row as the protocol declares it (the API's MetricPublic)."""
        extra = self.extra or {}
        return {m.name: getattr(self, m.name) if m.column else extra.get(m.name) for m in EPOCH_ROW} | {
            "nonfinite": extra.get("nonfinite")}


class JobEvent(Base):
    """What an event stream replays after Last-Event-ID: stored epochs and status changes, in order."""
    __tablename__ = "job_events"
    __table_args__ = {"sqlite_autoincrement": True}  # Last-Event-IDs stay unique across deletes
    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    data: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
