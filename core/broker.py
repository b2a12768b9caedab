"""The broker side of the protocol (kombu; no torch, no database): connections, the event publisher a worker
sends with, the control channel it listens on, and the cancel request the backend sends.

What travels (queue names, event kinds, the epoch row) is declared in core.protocol.
"""
from __future__ import annotations

import time
from typing import Any

from kombu import Connection

from .protocol import EVENTS_QUEUE, control_queue


def transport_options(broker_url: str, visibility_timeout_s: int) -> dict:
    """Broker options for every connection we open. Redis: redeliver only after a job could have finished.
    The SQLite transport hands its options to SQLAlchemy's create_engine: give it a busy timeout instead."""
    if broker_url.startswith("sqla+"):
        return {"connect_args": {"timeout": 30}}
    return {"visibility_timeout": visibility_timeout_s, "polling_interval": 0.5}


class EventPublisher:
    """Sends events on a connection of its own; retries while the broker is briefly away."""

    def __init__(self, broker_url: str, job_id: int, attempt: int, transport_options: dict | None = None):
        self.conn = Connection(broker_url, transport_options=transport_options or {})
        self.queue = self.conn.SimpleQueue(EVENTS_QUEUE)
        self.job_id, self.attempt = job_id, attempt

    def send(self, kind: str, **data: Any) -> None:
        event = {"type": kind, "job_id": self.job_id, "attempt": self.attempt, "ts": time.time(), **data}
        # ensure() reconnects and retries, so a Redis restart delays an event instead of losing it.
        put = self.conn.ensure(self.queue, self.queue.put, max_retries=None, interval_start=0.5,
                               interval_step=0.5, interval_max=2)
        put(event, serializer="json")

    def close(self) -> None:
        try:
            self.queue.close()
        finally:
            self.conn.release()


class ControlChannel:
    """A worker's view of its job's control queue: has a cancel been asked for this attempt?"""

    def __init__(self, broker_url: str, job_id: int, attempt: int, transport_options: dict | None = None,
                 min_interval_s: float = 0.5):
        self.conn = Connection(broker_url, transport_options=transport_options or {})
        self.queue = self.conn.SimpleQueue(control_queue(job_id, attempt))
        self.min_interval_s = min_interval_s  # fast cached epochs poll often; the broker is asked at most this often
        self._cancelled = False
        self._last = float("-inf")

    def cancelled(self) -> bool:
        if self._cancelled:
            return True
        now = time.monotonic()
        if now - self._last < self.min_interval_s:
            return False
        self._last = now
        try:
            while True:
                msg = self.queue.get_nowait()
                msg.ack()
                if msg.payload.get("action") == "cancel":
                    self._cancelled = True
        except self.queue.Empty:
            pass
        except Exception:  # noqa: BLE001 - a broker hiccup must not kill the run; ask again next time
            return False
        return self._cancelled

    def close(self) -> None:
        try:
            self.queue.close()
        finally:
            self.conn.release()


def request_cancel(conn: Connection, job_id: int, attempt: int) -> None:
    q = conn.SimpleQueue(control_queue(job_id, attempt))
    try:
        q.put({"action": "cancel"}, serializer="json")
    finally:
        q.close()
