"""The backend's side of the broker: send jobs to GPU workers, ask them to cancel. Torch-free: tasks are sent
by name, so the backend never imports the engine."""
from __future__ import annotations

from functools import lru_cache

from kombu import Connection

from worker.celery_app import make_celery
from worker.messages import JOBS_QUEUE, TASK_NAME, request_cancel, transport_options

from .settings import get_settings


class BrokerUnavailable(RuntimeError):
    pass


@lru_cache
def _celery():
    return make_celery(get_settings())


def dispatch(job_id: int, attempt: int, config: dict) -> None:
    try:
        _celery().send_task(TASK_NAME, args=[job_id, attempt, config], queue=JOBS_QUEUE,
                            retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                                      "interval_step": 0.5, "interval_max": 1})
    except Exception as e:  # noqa: BLE001 - any broker failure means the same to the caller
        raise BrokerUnavailable(f"the job broker is unreachable ({type(e).__name__}: {e})") from e


def cancel(job_id: int, attempt: int) -> None:
    try:
        s = get_settings()
        with Connection(s.broker_url, transport_options=transport_options(s.broker_url, s.visibility_timeout_s)) as conn:
            conn.ensure_connection(max_retries=3)
            request_cancel(conn, job_id, attempt)
    except Exception as e:  # noqa: BLE001
        raise BrokerUnavailable(f"the job broker is unreachable ({type(e).__name__}: {e})") from e
