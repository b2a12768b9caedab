"""The Celery application: one worker process per GPU, one job at a time, nothing lost when a worker dies.

Torch-free: the backend imports it to send tasks by name; only a worker imports worker.queue.tasks (and torch).
"""
from __future__ import annotations

from celery import Celery

from core.broker import transport_options
from core.protocol import JOBS_QUEUE
from core.settings import Settings, get_settings


def make_celery(settings: Settings | None = None) -> Celery:
    s = settings or get_settings()
    s.home.mkdir(parents=True, exist_ok=True)
    # report: the worker's self-report (device, throughput, weights and data present) for plans
    app = Celery("blocklab", broker=s.broker_url, backend=s.result_backend,
                 include=["worker.queue.tasks", "worker.queue.self_report"])
    app.conf.update(
        task_default_queue=JOBS_QUEUE,
        task_serializer="json", accept_content=["json"], result_serializer="json",
        # A job is acknowledged only when it ends; a worker lost mid-job leaves it to be delivered again.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a GPU worker holds one job, never a backlog
        worker_concurrency=1,
        # Longer than any job, so the broker never hands a live job to a second worker.
        broker_transport_options=transport_options(s.broker_url, s.visibility_timeout_s),
        broker_connection_retry_on_startup=True,
        result_expires=7 * 24 * 3600,
        worker_hijack_root_logger=False,
    )
    return app


app = make_celery()
