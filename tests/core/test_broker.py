"""core.broker against real brokers: an outage delays an event instead of losing it, and the worker's control
channel and the backend's cancel request ride out a broker restart."""
from __future__ import annotations

import sqlite3
import threading

from kombu import Connection

from core.broker import ControlChannel, EventPublisher, request_cancel
from core.protocol import EVENTS_QUEUE
from tests.lab import wait_for


def _consume(url: str, n: int, topts: dict | None = None) -> list[str]:
    """The backend's view: the kinds of the first n events on the events queue (fails when one is missing)."""
    kinds = []
    with Connection(url, transport_options=topts or {}) as conn:
        q = conn.SimpleQueue(EVENTS_QUEUE)
        for _ in range(n):
            msg = q.get(block=True, timeout=10)
            kinds.append(msg.payload["type"])
            msg.ack()
        q.close()
    return kinds


class _Sender(threading.Thread):
    """Sends one event in the background (a send blocks while the broker is away); remembers what it raised."""

    def __init__(self, pub: EventPublisher, kind: str):
        super().__init__(daemon=True)
        self.pub, self.kind, self.error = pub, kind, None

    def run(self):
        try:
            self.pub.send(self.kind)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e


def _publisher(url: str, topts: dict | None = None) -> tuple[EventPublisher, threading.Event]:
    """A publisher with fast retries and an event set once it has met a broker error."""
    failed = threading.Event()
    pub = EventPublisher(url, job_id=7, attempt=1, transport_options=topts, retry_start_s=0.05, retry_max_s=0.5,
                         on_retry=lambda e, delay: failed.set())
    return pub, failed


def test_an_event_sent_while_redis_restarts_goes_out_once_it_is_back(redis_server):
    pub, failed = _publisher(redis_server.url)
    pub.send("before")
    redis_server.kill()
    sender = _Sender(pub, "during")
    sender.start()
    assert failed.wait(60), "the publisher never met the outage"
    assert sender.is_alive(), f"the send gave up while Redis was away: {sender.error!r}"
    redis_server.start()  # same port, same append-only file
    sender.join(60)
    assert not sender.is_alive(), "the send never went out after Redis came back"
    assert sender.error is None, f"the send failed: {sender.error!r}"
    pub.send("after")  # the rebuilt connection keeps working
    pub.close()
    kinds = _consume(redis_server.url, 3)
    print(f"\nredis restart between two sends: {pub.retries} retries; the consumer got {kinds}")
    assert kinds == ["before", "during", "after"]


def test_an_event_sent_while_the_sqlite_broker_is_locked_waits_and_goes_out(tmp_path):
    """The SQLite broker locked beyond its busy timeout (another process in a long write) is an outage too."""
    path = tmp_path / "broker.sqlite"
    url, topts = f"sqla+sqlite:///{path}", {"connect_args": {"timeout": 0.1}}
    pub, failed = _publisher(url, topts)
    pub.send("before")
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # holds the write lock until COMMIT
    sender = _Sender(pub, "during")
    sender.start()
    assert failed.wait(60), "the publisher never met the lock"
    lock.execute("COMMIT")
    lock.close()
    sender.join(60)
    assert not sender.is_alive() and sender.error is None, f"the send failed: {sender.error!r}"
    pub.close()
    assert _consume(url, 2, topts) == ["before", "during"]


def test_the_control_channel_rides_out_a_redis_restart_and_hears_the_cancel(redis_server):
    control = ControlChannel(redis_server.url, job_id=3, attempt=2, min_interval_s=0)
    backend = Connection(redis_server.url)  # connected before the restart, as the backend's would be
    backend.ensure_connection(max_retries=1)
    assert control.cancelled() is False
    redis_server.kill()
    assert control.cancelled() is False  # no news, and no exception into the training loop
    redis_server.start()
    request_cancel(backend, 3, 2)  # its socket died with the old Redis: a fresh one must carry the cancel
    backend.release()
    assert wait_for(control.cancelled, 30, "the worker to hear the cancel")
    control.close()


def test_a_job_that_starts_while_redis_is_away_neither_fails_nor_misses_its_cancel(redis_server):
    """A worker can take a job just before Redis goes: opening its channels must not raise into run_job."""
    redis_server.kill()
    control = ControlChannel(redis_server.url, job_id=4, attempt=1, min_interval_s=0)
    pub, _ = _publisher(redis_server.url)
    assert control.cancelled() is False
    redis_server.start()
    pub.send("started")
    with Connection(redis_server.url) as conn:
        request_cancel(conn, 4, 1)
    assert wait_for(control.cancelled, 30, "the worker to hear the cancel")
    control.close()
    pub.close()
    assert _consume(redis_server.url, 1) == ["started"]


def test_a_cancel_for_another_attempt_is_not_heard(redis_server):
    control = ControlChannel(redis_server.url, job_id=3, attempt=2, min_interval_s=0)
    with Connection(redis_server.url) as conn:
        request_cancel(conn, 3, 1)
    assert control.cancelled() is False
    control.close()
