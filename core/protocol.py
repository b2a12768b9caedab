"""The wire protocol between workers and the backend: what travels over the broker (no torch, no database).

- Events, worker -> backend, on one durable queue: started, info, progress, epoch, heartbeat, finished. Each
  carries the job id and the attempt that sent it. Epoch events are idempotent (the backend stores each
  (job, epoch) once), so a worker may resend them: it replays every finished epoch from its checkpoint on start.
- Control, backend -> worker, on one queue per job attempt: cancel requests (from a user, or because the backend
  gave the job to another worker after this one went silent).
"""
from __future__ import annotations

EVENTS_QUEUE = "blocklab.events"
JOBS_QUEUE = "gpu"
TASK_NAME = "blocklab.run_job"


def control_queue(job_id: int, attempt: int) -> str:
    """One queue per attempt: a cancel meant for a superseded attempt never reaches the current one's worker."""
    return f"blocklab.control.job{job_id}.attempt{attempt}"
