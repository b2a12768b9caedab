"""The backend's side of the broker: send jobs to GPU workers by task name, ask them to cancel, and see which
jobs the broker holds.

Torch-free and engine-free: the backend knows only the protocol (core.protocol), never the worker's code. Its
Celery app is a bare client that sends a task by name to the workers' queue.

A job keeps its place: one that had it already (its worker died, or the broker lost it) goes `ahead` of the jobs
that never started. Redis: two of its transport's priority lists (the worker empties the first before it looks at
the second), each first in, first out. SQLite: the transport takes the message with the oldest timestamp first (a
column kombu leaves empty), so every message is dated with its job's place in the queue (`queued_at`, which a
requeue keeps): the broker's order is then the queue's order the API shows.
"""
from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
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


# Redis priorities (kombu: 0 is taken first; its default steps 0, 3, 6, 9 are separate lists).
AHEAD_PRIORITY, BACK_PRIORITY = 0, 9


def task_id(job_id: int, attempt: int) -> str:
    """The broker message of one attempt: found again by this id (SQLite) and never sent twice under another."""
    return f"blocklab-job{job_id}-attempt{attempt}"


def dispatch(job_id: int, attempt: int, config: dict, ahead: bool = False, place: datetime | None = None) -> None:
    """Send an attempt to the workers' queue: at the back, or `ahead` of every job that never started; `place`:
    the job's place in the queue (its queued_at, UTC), which orders the SQLite broker."""
    try:
        _client().send_task(TASK_NAME, args=[job_id, attempt, config], queue=JOBS_QUEUE,
                            task_id=task_id(job_id, attempt), priority=AHEAD_PRIORITY if ahead else BACK_PRIORITY,
                            retry=True, retry_policy={"max_retries": 3, "interval_start": 0.2,
                                                      "interval_step": 0.5, "interval_max": 1})
        if get_settings().broker_url.startswith("sqla+sqlite"):
            _date(job_id, attempt, place or datetime.now(UTC).replace(tzinfo=None))
    except Exception as e:  # noqa: BLE001 - any broker failure means the same to the caller
        raise BrokerUnavailable(f"the job broker is unreachable ({type(e).__name__}: {e})") from e


@lru_cache
def _sqlite(url: str):
    from sqlalchemy import create_engine
    return create_engine(url.removeprefix("sqla+"), connect_args={"timeout": 30})  # the transport's busy timeout


def _date(job_id: int, attempt: int, place: datetime) -> None:
    """Date the attempt's message with its place (SQLAlchemy's SQLite format: its text sorts as its time)."""
    from sqlalchemy import text
    with _sqlite(get_settings().broker_url).begin() as c:
        c.execute(text("UPDATE kombu_message SET timestamp = :at WHERE visible = 1 AND payload LIKE :id AND "
                       "queue_id = (SELECT id FROM kombu_queue WHERE name = :queue)"),
                  {"at": place.strftime("%Y-%m-%d %H:%M:%S.%f"), "id": f'%"{task_id(job_id, attempt)}"%',
                   "queue": JOBS_QUEUE})


def held() -> set[tuple[int, int]] | None:
    """The (job, attempt) of every task the broker holds: waiting in the jobs queue or taken by a worker that has
    not acknowledged it. None where a broker cannot lose what it was given while the database keeps it: the SQLite
    transport is a file beside the database (only Redis, restarted without its data, forgets)."""
    url = get_settings().broker_url
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis
    client = redis.Redis.from_url(url)
    try:
        with client.pipeline(transaction=True) as pipe:  # one snapshot: a task moving from waiting to taken is seen
            for key in _priority_lists():
                pipe.lrange(key, 0, -1)
            pipe.hvals("unacked")
            *waiting, taken = pipe.execute()
    finally:
        client.close()
    out = set()
    for raw in [m for lst in waiting for m in lst]:
        out.update(_attempts(raw))
    for raw in taken:  # [message, exchange, routing key]
        try:
            out.update(_attempts(json.dumps(json.loads(raw)[0])))
        except (ValueError, TypeError, IndexError):
            continue
    return out


def _priority_lists() -> list[str]:
    return [JOBS_QUEUE if p == 0 else f"{JOBS_QUEUE}\x06\x16{p}" for p in (0, 3, 6, 9)]


def _attempts(raw) -> set[tuple[int, int]]:
    """The (job, attempt) a raw Celery message carries (protocol 2: args in the base64 JSON body), if it is ours."""
    try:
        msg = json.loads(raw)
        if msg.get("headers", {}).get("task") != TASK_NAME:
            return set()
        args = json.loads(base64.b64decode(msg["body"]))[0]
        return {(int(args[0]), int(args[1]))}
    except (ValueError, TypeError, KeyError, IndexError):
        return set()


def cancel(job_id: int, attempt: int, force: bool = False) -> None:
    """Tell the worker of this attempt to stop (`force`: at once, ending its process if it must)."""
    try:
        s = get_settings()
        with Connection(s.broker_url, transport_options=transport_options(s.broker_url, s.visibility_timeout_s)) as conn:
            conn.ensure_connection(max_retries=3)
            request_cancel(conn, job_id, attempt, force=force)
    except Exception as e:  # noqa: BLE001
        raise BrokerUnavailable(f"the job broker is unreachable ({type(e).__name__}: {e})") from e
