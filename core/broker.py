"""The broker side of the protocol (kombu; no torch, no database): connections, the event publisher a worker
sends with, the control channel it listens on, and the cancel request the backend sends.

What travels (queue names, event kinds, the epoch row) is declared in core.protocol.

Reconnecting is done here, not by kombu's Connection.ensure: ensure() calls `revive(channel)` on the object it
retries for after a reconnect, and a SimpleQueue has no such method, so the first event after a Redis restart
raised AttributeError (and killed the worker's heartbeat thread). A _Link instead drops its connection and
queue on a broker error and builds both again on the next use.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kombu import Connection
from kombu import exceptions as kombu_errors

from .protocol import EVENTS_QUEUE, control_queue

log = logging.getLogger("blocklab.broker")


def transport_options(broker_url: str, visibility_timeout_s: int) -> dict:
    """Broker options for every connection we open. Redis: redeliver only after a job could have finished.
    The SQLite transport hands its options to SQLAlchemy's create_engine: give it a busy timeout instead."""
    if broker_url.startswith("sqla+"):
        return {"connect_args": {"timeout": 30}}
    return {"visibility_timeout": visibility_timeout_s, "polling_interval": 0.5}


def broker_errors(conn: Connection) -> tuple[type[BaseException], ...]:
    """What a broker outage raises: the transport's connection and channel errors (Redis refused, reset or
    still loading; SQLite locked), socket errors, and kombu's wrappers of them. Anything else is a bug."""
    return (tuple(conn.connection_errors) + tuple(conn.channel_errors)
            + (OSError, kombu_errors.OperationalError, kombu_errors.ConnectionError, kombu_errors.ChannelError))


def _short(e: BaseException) -> str:
    """An error in one line (SQLAlchemy's carry the statement and its parameters)."""
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def _release_session(queue) -> None:
    """kombu's SQLite transport keeps a SQLAlchemy session per channel, on one engine (pool 5 + 10) shared by every
    connection of the process; a read leaves that session holding a pooled connection, and closing the channel
    does not give it back. Many short-lived links (two per job) then empty the pool and the next one waits 30 s
    and fails. Closing the session returns its connection; the channel opens a new one when used again."""
    session = getattr(getattr(queue, "channel", None), "_session", None)
    if session is not None:
        try:
            session.close()
        except Exception:  # noqa: BLE001 - a broken session is dropped all the same
            pass


class _Link:
    """One connection and one SimpleQueue on it, opened on first use and thrown away after a broker error, so
    the next use starts from a fresh connection (a broken Redis socket or SQLite session is never reused)."""

    def __init__(self, broker_url: str, queue_name: str, transport_options: dict | None):
        self.broker_url, self.queue_name = broker_url, queue_name
        self.transport_options = transport_options or {}
        self.conn: Connection | None = None
        self.queue = None
        # The error classes depend only on the transport: read them once, without connecting.
        self.errors = broker_errors(Connection(broker_url, transport_options=self.transport_options))

    def open(self):
        if self.queue is None:
            self.conn = Connection(self.broker_url, transport_options=self.transport_options)
            self.queue = self.conn.SimpleQueue(self.queue_name)
        return self.queue

    def idle(self) -> None:
        """Give back what the link holds between uses (see _release_session)."""
        if self.queue is not None:
            _release_session(self.queue)

    def reset(self) -> None:
        queue, conn, self.queue, self.conn = self.queue, self.conn, None, None
        if queue is not None:
            _release_session(queue)
        for close in (queue and queue.close, conn and conn.release):
            try:
                close and close()
            except Exception:  # noqa: BLE001 - it is broken already; we only drop it
                pass


class EventPublisher:
    """Sends events on a connection of its own. A send returns once the broker has the event: while the broker
    is away it reconnects and retries with backoff, so an outage delays an event instead of losing it (the
    backend stores each epoch once, so a retried event is harmless). Safe to share between threads."""

    def __init__(self, broker_url: str, job_id: int, attempt: int, transport_options: dict | None = None,
                 retry_start_s: float = 0.2, retry_max_s: float = 2.0,
                 on_retry: Callable[[BaseException, float], None] | None = None):
        self.link = _Link(broker_url, EVENTS_QUEUE, transport_options)
        self.job_id, self.attempt = job_id, attempt
        self.retry_start_s, self.retry_max_s = retry_start_s, retry_max_s
        self.on_retry = on_retry  # called with (error, next delay) before each wait; tests and metrics
        self.retries = 0  # broker errors survived so far
        self._lock = threading.Lock()  # the heartbeat thread and the training loop share one connection

    def send(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "job_id": self.job_id, "attempt": self.attempt, "ts": time.time(), **data}
        with self._lock:
            delay, down_since = self.retry_start_s, None
            while True:
                try:
                    self.link.open().put(event, serializer="json")
                    self.link.idle()
                    break
                except self.link.errors as e:
                    self.link.reset()
                    self.retries += 1
                    if down_since is None:
                        down_since = time.monotonic()
                        log.warning("broker unreachable (%s); retrying the %r event until it is back", _short(e), kind)
                    if self.on_retry:
                        self.on_retry(e, delay)
                    time.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
            if down_since is not None:
                log.warning("broker back: the %r event went out %.1f s late", kind, time.monotonic() - down_since)

    def close(self) -> None:
        with self._lock:
            self.link.reset()


class ControlChannel:
    """A worker's view of its job's control queue: has a cancel been asked for this attempt, and was it a force
    stop (`force`: the worker is to end at once, its process too if it must)?

    Never raises: a broker hiccup must not kill the run, so an error means "no news", the connection is
    rebuilt, and the question is asked again at the next check. One thread asks (the task's watchdog)."""

    def __init__(self, broker_url: str, job_id: int, attempt: int, transport_options: dict | None = None,
                 min_interval_s: float = 0.5):
        self.link = _Link(broker_url, control_queue(job_id, attempt), transport_options)
        self.min_interval_s = min_interval_s  # fast cached epochs poll often; the broker is asked at most this often
        # SQLite: taking a message locks the whole broker file (BEGIN IMMEDIATE), so count first (a read) and
        # take only when there is something; Redis cannot count an empty queue (it does not exist) and need not.
        self._peek = broker_url.startswith("sqla+")
        self._cancelled = False
        self.force = False  # a cancel with force=true arrived
        self._last = float("-inf")
        self._failing = False

    def cancelled(self) -> bool:
        if self._cancelled and self.force:
            return True  # nothing more to hear
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return self._cancelled
        self._last = now
        try:
            q = self.link.open()
            if not (self._peek and q.qsize() == 0):
                self._drain(q)
            self.link.idle()
        except Exception as e:  # noqa: BLE001 - no news this time; a fresh connection asks again next time
            if not self._failing:
                log.warning("control queue unreachable (%s); asking again later", _short(e))
            self._failing = True
            self.link.reset()
            return self._cancelled
        if self._failing:
            log.warning("control queue reachable again")
            self._failing = False
        return self._cancelled

    def _drain(self, q) -> None:
        while True:
            try:
                msg = q.get_nowait()
            except q.Empty:
                return
            msg.ack()
            if msg.payload.get("action") == "cancel":
                self._cancelled = True
                self.force = self.force or bool(msg.payload.get("force"))

    def close(self) -> None:
        self.link.reset()


def announce(broker_url: str, transport_options: dict | None, kind: str, **data: Any) -> None:
    """One event that speaks for no job (the launcher's word that a worker process ended), sent once and at once:
    a broker that is away raises, and the caller judges (it must not wait the way a job's events do)."""
    with Connection(broker_url, transport_options=transport_options or {}, connect_timeout=2) as conn:
        conn.ensure_connection(max_retries=1)
        q = conn.SimpleQueue(EVENTS_QUEUE)
        try:
            q.put({"type": kind, "job_id": 0, "attempt": 0, "ts": time.time(), **data}, serializer="json")
        finally:
            _release_session(q)
            q.close()


def request_cancel(conn: Connection, job_id: int, attempt: int, tries: int = 3, backoff_s: float = 0.2,
                   force: bool = False) -> None:
    """Ask the worker of this attempt to stop (`force`: at once, ending its process if it must; its supervisor
    starts a fresh one). A broken connection (Redis restarted since `conn` connected) is
    retried on a fresh clone of it; after `tries` the last error is raised for the caller to judge (a worker
    that cannot hear a cancel is either gone, which the watchdog handles, or finishes normally)."""
    errors = broker_errors(conn)
    for i in range(tries):
        c = conn if i == 0 else conn.clone()
        try:
            q = c.SimpleQueue(control_queue(job_id, attempt))
            try:
                q.put({"action": "cancel", "force": force}, serializer="json")
            finally:
                _release_session(q)
                q.close()
            return
        except errors:
            if i == tries - 1:
                raise
            time.sleep(backoff_s * 2**i)
        finally:
            if c is not conn:
                c.release()
