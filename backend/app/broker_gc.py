"""Keeps the job broker bounded: deletes what no one will read again.

kombu's SQLite transport (the broker when REDIS_URL is unset) never deletes a message: taking one only marks it
invisible, and an ack changes nothing on disk. Every job attempt also leaves its control queue behind
(core.protocol.control_queue). A lab that ran for 25 minutes held 4,220 dead messages and 130 such queues.
Redis deletes a message when it is taken, but an attempt's control queue leaves its binding key (and the list
of a cancel no worker took).

What is safe to delete:
- invisible SQLite messages: the transport never reads them again (a message a consumer died holding is not
  redelivered from that row either: the watchdog requeues its job as a new message);
- the control queues of finished attempts, i.e. of jobs that ended a grace period ago. Not sooner: a worker
  frozen (or cut off) while its attempt was superseded learns that it must stop from the cancel waiting in its
  queue when it wakes.

The Ingestor thread runs a Collector once a minute (backend/app/ingest.py).
"""
from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from core.settings import Settings

log = logging.getLogger("blocklab.broker_gc")

Attempt = tuple[int, int]  # (job id, attempt)
# Given the attempts that have a control queue in the broker, which of them are finished?
FinishedAttempts = Collection[Attempt] | Callable[[set[Attempt]], Iterable[Attempt]]

# A control queue (core.protocol.control_queue), alone (a SQLite queue's name) or in a Redis key: kombu names the
# list of priority N "<queue>\x06\x16N" and a SimpleQueue's exchange (named as its queue) has its bindings in
# "_kombu.binding.<queue>" and "_kombu.binding_permanent.<queue>".
_CONTROL = re.compile(r"(?:^|\.)blocklab\.control\.job(\d+)\.attempt(\d+)(?:\x06\x16\d+)?$")
_QUEUES, _MESSAGES = "kombu_queue", "kombu_message"  # the SQLite transport's default table names
_CHUNK = 500  # ids per IN (...): far below SQLite's limit on bound parameters


@dataclass
class Collected:
    messages: int = 0  # consumed messages deleted (SQLite)
    queues: int = 0  # finished attempts whose control queue was removed
    keys: int = 0  # Redis keys deleted


def collect(settings: Settings, finished_attempts: FinishedAttempts) -> Collected:
    """One pass over the broker `settings` names. `finished_attempts` says which attempts are over: a set of
    (job, attempt), or a function given the attempts that have a control queue (finished_in_db)."""
    url = settings.broker_url
    if url.startswith("sqla+sqlite"):
        return _collect_sqlite(_engine(url.removeprefix("sqla+")), finished_attempts)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return _collect_redis(url, finished_attempts)
    return Collected()  # another transport: nothing we know how to clean


def _finished(candidates: set[Attempt], finished_attempts: FinishedAttempts) -> set[Attempt]:
    if not candidates:
        return set()
    if callable(finished_attempts):
        return set(finished_attempts(candidates)) & candidates
    return {a for a in candidates if a in finished_attempts}


def _attempt(name: str) -> Attempt | None:
    m = _CONTROL.search(name)
    return (int(m[1]), int(m[2])) if m else None


def _chunks(ids: list) -> Iterable[list]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


# -- SQLite ------------------------------------------------------------------------------------------------------
@lru_cache
def _engine(db_url: str) -> Engine:
    return create_engine(db_url, connect_args={"timeout": 30})  # the transport's own busy timeout


def _collect_sqlite(engine: Engine, finished_attempts: FinishedAttempts) -> Collected:
    if not {_QUEUES, _MESSAGES} <= set(inspect(engine).get_table_names()):
        return Collected()  # no broker traffic yet
    with engine.connect() as c:
        rows = c.execute(text(f"SELECT id, name FROM {_QUEUES} WHERE name LIKE 'blocklab.control.%'")).all()
    queue_ids = {a: qid for qid, name in rows if (a := _attempt(name)) and name.startswith("blocklab.")}
    # Asked outside the broker's transaction: the app's database is never consulted with the broker locked.
    done = sorted(queue_ids[a] for a in _finished(set(queue_ids), finished_attempts))
    out = Collected(queues=len(done))
    with engine.begin() as c:  # one short write transaction
        out.messages = c.execute(text(f"DELETE FROM {_MESSAGES} WHERE visible = 0")).rowcount
        for ids in _chunks(done):
            marks = ", ".join(str(int(i)) for i in ids)  # integers from the table itself
            c.execute(text(f"DELETE FROM {_MESSAGES} WHERE queue_id IN ({marks})"))
            c.execute(text(f"DELETE FROM {_QUEUES} WHERE id IN ({marks})"))
    return out


# -- Redis -------------------------------------------------------------------------------------------------------
def _collect_redis(url: str, finished_attempts: FinishedAttempts) -> Collected:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys: dict[Attempt, list[bytes]] = {}
        for key in client.scan_iter(match="*blocklab.control.job*", count=1000):
            if a := _attempt(key.decode(errors="replace")):
                keys.setdefault(a, []).append(key)
        done = _finished(set(keys), finished_attempts)
        doomed = [k for a in done for k in keys[a]]
        deleted = sum(client.delete(*ks) for ks in _chunks(doomed))
        return Collected(queues=len(done), keys=deleted)
    finally:
        client.close()


# -- the backend's view of which attempts are over ----------------------------------------------------------------
def finished_in_db(grace_s: float) -> Callable[[set[Attempt]], set[Attempt]]:
    """Attempts of jobs that ended (succeeded, failed, cancelled) at least grace_s ago: every attempt up to the
    job's last. A running job's superseded attempts wait for the job to end (see the module's docstring)."""
    from sqlalchemy import select

    from core.protocol import TERMINAL

    from .db import session_scope
    from .models import Job, utcnow

    def finished(candidates: set[Attempt]) -> set[Attempt]:
        cutoff = utcnow() - timedelta(seconds=grace_s)
        last: dict[int, int] = {}
        with session_scope() as db:
            for ids in _chunks(sorted({j for j, _ in candidates})):
                last.update(db.execute(select(Job.id, Job.attempt).where(
                    Job.id.in_(ids), Job.status.in_([str(s) for s in TERMINAL]),
                    # A job cancelled before it ever started may still have its task waiting in the jobs
                    # queue: its cancel must stay until a worker takes that task.
                    Job.started_at.is_not(None),
                    Job.finished_at.is_not(None), Job.finished_at <= cutoff)).all())
        return {(j, a) for j, a in candidates if j in last and a <= last[j]}

    return finished


class Collector:
    """Runs collect() at most once per `every_s` from a loop that calls maybe_run() often (the Ingestor's); a
    failure is logged and never reaches that loop."""

    def __init__(self, settings: Settings, every_s: float = 60.0, grace_s: float = 600.0):
        self.settings, self.every_s = settings, every_s
        self.finished = finished_in_db(grace_s)
        self._next = time.monotonic() + every_s  # not at start: the backend has other things to do first

    def maybe_run(self) -> Collected | None:
        if time.monotonic() < self._next:
            return None
        self._next = time.monotonic() + self.every_s
        try:
            out = collect(self.settings, self.finished)
        except Exception:  # noqa: BLE001 - a broker that cannot be cleaned now is cleaned next time
            log.exception("broker gc failed; trying again in %.0f s", self.every_s)
            return None
        if out.messages or out.queues:
            log.info("broker gc: %d consumed messages, %d finished attempts' control queues (%d Redis keys)",
                     out.messages, out.queues, out.keys)
        return out
