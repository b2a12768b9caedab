"""The backend's side of the broker: send jobs to GPU workers by task name, ask them to cancel.

Torch-free and engine-free: the backend knows only the protocol (core.protocol), never the worker's code. Its
Celery app is a bare client that sends a task by name to the workers' queue.
"""
from __future__ import annotations

from functools import lru_cache

from celery import Celery
from kombu import Connection

from core.broker import request_cancel, transport_options
from core.protocol import JOBS_QUEUE, TASK_NAME
from core.settings import get_settings


class BrokerUnavailable(RuntimeError):
    pass


@lru_cache
def _client() -> Celery:
    s = get_settings()
    s.home.mkdir(parents=True, exist_ok=True)
    app = Celery("blocklab-backend", broker=s.broker_url, backend=s.result_backend)
    app.conf.update(task_serializer="json", accept_content=["json"],
                    broker_transport_options=transport_options(s.broker_url, s.visibility_timeout_s))
    return app


def dispatch(job_id: int, attempt: int, config: dict) -> None:
    try:
        _client().send_task(TASK_NAME, args=[job_id, attempt, config], queue=JOBS_QUEUE,
                            retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                                      "interval_step": 0.5, "interval_max": 1})
    except Exception as e:  # noqa: BLE001 - any broker failure means the same to the caller
        raise BrokerUnavailable(f"the job broker is unreachable ({type(e).__name__}: {e})") from e


def cancel(job_id: int, attempt: int, force: bool = False) -> None:
    """Tell the worker of this attempt to stop (`force`: at once, ending its process if it must)."""
    try:
        s = get_settings()
        with Connection(s.broker_url, transport_options=transport_options(s.broker_url, s.visibility_timeout_s)) as conn:
            conn.ensure_connection(max_retries=3)
            request_cancel(conn, job_id, attempt, force=force)
    except Exception as e:  # noqa: BLE001
        raise BrokerUnavailable(f"the job broker is unreachable ({type(e).__name__}: {e})") from e
