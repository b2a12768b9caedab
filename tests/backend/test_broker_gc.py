"""The broker stays bounded: consumed messages and finished attempts' control queues are removed, and nothing a
live job still needs is touched. Jobs are simulated on real brokers with the real publisher, control channel
and consumer (core.broker), as a worker and the backend's ingestor use them."""
from __future__ import annotations

import sqlite3
from datetime import timedelta

import pytest
from kombu import Connection

from backend.app import broker_gc
from core.broker import ControlChannel, EventPublisher, request_cancel
from core.protocol import EVENTS_QUEUE, JOBS_QUEUE
from tests.core.conftest import Redis

EVENTS_PER_ATTEMPT = 12


@pytest.fixture
def sqlite_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("BLOCKLAB_REDIS_URL", raising=False)
    monkeypatch.setenv("BLOCKLAB_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    from core.settings import Settings
    return Settings()


@pytest.fixture
def redis_settings(tmp_path, monkeypatch):
    r = Redis(tmp_path)
    r.start()
    monkeypatch.setenv("REDIS_URL", r.url)
    from core.settings import Settings
    yield Settings()
    r.proc.stop()


def _topts(url: str) -> dict:
    return {"connect_args": {"timeout": 30}} if url.startswith("sqla+") else {}


class Lab:
    """Simulated jobs: a task message taken by a worker, its events published and consumed, a control queue
    per attempt (checked by the worker; a cancel left in it when the attempt was superseded)."""

    def __init__(self, url: str):
        self.url, self.topts = url, _topts(url)
        self.conn = Connection(url, transport_options=self.topts)
        self.events = self.conn.SimpleQueue(EVENTS_QUEUE)
        self.tasks = self.conn.SimpleQueue(JOBS_QUEUE)
        self.jobs = 0
        self.finished: set[tuple[int, int]] = set()

    def job(self, attempts: int = 1) -> int:
        self.jobs += 1
        jid = self.jobs
        for attempt in range(1, attempts + 1):
            self.tasks.put({"job": jid, "attempt": attempt}, serializer="json")
            self.tasks.get(block=True, timeout=10).ack()  # a worker takes it
            control = ControlChannel(self.url, jid, attempt, self.topts, min_interval_s=0)
            pub = EventPublisher(self.url, jid, attempt, self.topts)
            for i in range(EVENTS_PER_ATTEMPT):
                pub.send("progress", i=i)
                control.cancelled()
            pub.close()
            control.close()
            if attempt < attempts:
                request_cancel(self.conn, jid, attempt)  # superseded: nobody takes this cancel
            for _ in range(EVENTS_PER_ATTEMPT):
                self.events.get(block=True, timeout=10).ack()  # the ingestor
            self.finished.add((jid, attempt))
        return jid

    def close(self):
        self.events.close()
        self.tasks.close()
        self.conn.release()


def _sqlite_size(settings) -> dict:
    path = settings.home / "broker.sqlite"
    db = sqlite3.connect(path)
    try:
        (messages,), (queues,) = (db.execute(f"SELECT count(*) FROM {t}").fetchone()
                                  for t in ("kombu_message", "kombu_queue"))
        (page,), (pages,), (free,) = (db.execute(f"PRAGMA {p}").fetchone()
                                      for p in ("page_size", "page_count", "freelist_count"))
    finally:
        db.close()
    return {"messages": messages, "queues": queues, "used_kib": (pages - free) * page // 1024,
            "file_kib": path.stat().st_size // 1024}


def _run(lab, settings, jobs: int, size, collect: bool = True) -> list[dict]:
    """`jobs` simulated jobs (every third one needs two attempts), collected after every five as the backend
    would once a minute; the broker's size after every five."""
    sizes = []
    for n in range(1, jobs + 1):
        lab.job(attempts=2 if n % 3 == 0 else 1)
        if n % 5 == 0:
            if collect:
                broker_gc.collect(settings, lab.finished)
            sizes.append(size(settings))
    return sizes


@pytest.mark.slow
def test_after_50_jobs_the_sqlite_broker_is_the_size_it_was_after_5(sqlite_settings, tmp_path):
    from core.settings import Settings
    plain = Settings(home=tmp_path / "uncollected")  # the same jobs without collection: what piles up today
    plain.home.mkdir()
    lab = Lab(plain.broker_url)
    piled = _run(lab, plain, 50, _sqlite_size, collect=False)[-1]
    lab.close()
    lab = Lab(sqlite_settings.broker_url)
    sizes = _run(lab, sqlite_settings, 50, _sqlite_size)
    lab.close()
    after5, after50 = sizes[0], sizes[-1]
    print(f"\nsqlite broker, 50 jobs uncollected: {piled}\n  collected, after 5 jobs: {after5}\n"
          f"  collected, after 50 jobs: {after50}")
    assert piled["messages"] > 50 * EVENTS_PER_ATTEMPT and piled["queues"] > 50
    assert after50["messages"] == after5["messages"] == 0
    assert after50["queues"] == after5["queues"] == 2  # the events queue and the jobs queue
    assert after50["used_kib"] <= after5["used_kib"] + 8  # the same pages, give or take an index page
    assert after50["file_kib"] <= 1.5 * after5["file_kib"]  # freed pages are reused: the file stops growing


def test_collection_keeps_what_live_jobs_need_on_sqlite(sqlite_settings):
    url = sqlite_settings.broker_url
    lab = Lab(url)
    done = lab.job()
    running = ControlChannel(url, 99, 2, _topts(url), min_interval_s=0)
    running.cancelled()  # its queue exists
    with Connection(url, transport_options=_topts(url)) as conn:
        request_cancel(conn, 99, 1)  # superseded, but its job is not over: a frozen worker may still wake
        conn.SimpleQueue(JOBS_QUEUE).put({"job": 100}, serializer="json")  # a queued job
        conn.SimpleQueue(EVENTS_QUEUE).put({"type": "heartbeat"}, serializer="json")  # an event not yet read
    out = broker_gc.collect(sqlite_settings, {(done, 1)})
    assert (out.queues, out.messages) == (1, 1 + EVENTS_PER_ATTEMPT)  # its task and events, consumed
    with Connection(url, transport_options=_topts(url)) as conn:
        assert conn.SimpleQueue(JOBS_QUEUE).get(timeout=5).payload == {"job": 100}
        assert conn.SimpleQueue(EVENTS_QUEUE).get(timeout=5).payload == {"type": "heartbeat"}
    assert ControlChannel(url, 99, 1, _topts(url), min_interval_s=0).cancelled()
    with Connection(url, transport_options=_topts(url)) as conn:
        request_cancel(conn, 99, 2)
    assert running.cancelled()
    running.close()
    lab.close()


def _redis_size(settings) -> dict:
    import redis
    r = redis.Redis.from_url(settings.broker_url)
    try:
        return {"keys": r.dbsize(), "control_keys": sum(1 for _ in r.scan_iter(match="*blocklab.control.*"))}
    finally:
        r.close()


@pytest.mark.redis
@pytest.mark.slow
def test_after_50_jobs_redis_holds_the_keys_it_held_after_5(redis_settings):
    lab = Lab(redis_settings.broker_url)
    sizes = _run(lab, redis_settings, 50, _redis_size)
    lab.close()
    print(f"\nredis broker after 5 jobs: {sizes[0]}; after 50 jobs: {sizes[-1]}")
    assert sizes[-1] == sizes[0] and sizes[-1]["control_keys"] == 0


def test_finished_attempts_are_those_of_jobs_that_ended_a_grace_period_ago(api):
    from backend.app.db import session_scope
    from backend.app.models import Experiment, Job, utcnow

    old, now = utcnow() - timedelta(minutes=20), utcnow()
    with session_scope() as db:
        exp = Experiment(name="gc", config={"model": "deit_tiny_patch16_224"})
        db.add(exp)
        specs = [("succeeded", 2, old), ("running", 3, None), ("failed", 1, now), ("cancelled", 1, old)]
        jobs = [Job(experiment=exp, status=s, attempt=a, finished_at=f, started_at=old) for s, a, f in specs]
        # Cancelled while queued: its task may still wait for a worker, so its cancel must stay.
        jobs.append(Job(experiment=exp, status="cancelled", attempt=1, finished_at=old, started_at=None))
        db.add_all(jobs)
        db.commit()
        ids = [j.id for j in jobs]
    candidates = {(ids[0], 1), (ids[0], 2), (ids[1], 1), (ids[1], 2), (ids[1], 3), (ids[2], 1), (ids[3], 1),
                  (ids[4], 1), (10_000, 1)}
    assert broker_gc.finished_in_db(grace_s=600)(candidates) == {(ids[0], 1), (ids[0], 2), (ids[3], 1)}


def test_the_backend_collector_cleans_finished_jobs_once_per_period_and_never_raises(api, monkeypatch):
    from backend.app.db import session_scope
    from backend.app.models import Experiment, Job, utcnow
    from core.settings import get_settings

    settings = get_settings()
    url = settings.broker_url
    with session_scope() as db:
        exp = Experiment(name="gc", config={"model": "deit_tiny_patch16_224"})
        done, running = Job(experiment=exp, status="succeeded", attempt=1, finished_at=utcnow(),
                            started_at=utcnow()), Job(experiment=exp, status="running", attempt=1)
        db.add_all([exp, done, running])
        db.commit()
        ids = done.id, running.id
    for jid in ids:
        ControlChannel(url, jid, 1, _topts(url), min_interval_s=0).cancelled()  # each leaves its queue
    gc = broker_gc.Collector(settings, every_s=3600, grace_s=0)
    assert gc.maybe_run() is None  # not in its first period: the backend has just started
    gc._next = 0.0
    out = gc.maybe_run()
    assert out is not None and out.queues == 1
    assert gc.maybe_run() is None  # once per period
    monkeypatch.setattr(broker_gc, "collect", lambda *a: 1 / 0)
    gc._next = 0.0
    assert gc.maybe_run() is None  # logged, not raised into the ingestor's loop
    with sqlite3.connect(settings.home / "broker.sqlite") as db:
        names = {n for (n,) in db.execute("SELECT name FROM kombu_queue")}
    assert f"blocklab.control.job{ids[1]}.attempt1" in names and f"blocklab.control.job{ids[0]}.attempt1" not in names
