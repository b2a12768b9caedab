"""Live event streams: woken when their job changes, bounded in number, kept alive, and closed in time.

A stream sleeps until the backend records a change of its job (an event ingested from a worker, a cancel or a
resume), instead of asking the database every few hundred milliseconds: 300 idle streams cost nothing. The
number of open streams is capped overall and per client address (429 beyond), an idle stream sends a keep-alive
comment every `stream_keepalive_s`, and a stream ends after `stream_max_s` (the browser's EventSource reconnects
on its own, with Last-Event-ID, so nothing is missed).
"""
from __future__ import annotations

import asyncio
import threading
from collections import Counter
from contextlib import contextmanager


class TooManyStreams(Exception):
    pass


class Streams:
    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, set[asyncio.Event]] = {}
        # Changes seen per job: a stream notes the count before it reads the database, so a change committed
        # between its read and its wait wakes it at once instead of being lost until the next keep-alive.
        self._versions: Counter[int] = Counter()
        self._lock = threading.Lock()
        self.open = 0
        self.per_client: Counter[str] = Counter()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def changed(self, job_id: int) -> None:
        """Wake the streams of a job; safe from any thread (ingestion runs in one of its own)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake, job_id)

    def _wake(self, job_id: int) -> None:
        self._versions[job_id] += 1
        for ev in self._waiters.get(job_id, ()):
            ev.set()

    def version(self, job_id: int) -> int:
        """How many changes of the job this process has seen (read on the event loop, like `_wake` writes it)."""
        return self._versions[job_id]

    async def wait(self, job_id: int, timeout: float, seen: int | None = None) -> bool:
        """Until the job changes (True) or `timeout` passes (False). With `seen` (a `version` read before the
        caller looked at the database), a change since then returns True at once."""
        if seen is not None and self._versions[job_id] != seen:
            return True
        ev = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(ev)
        try:
            await asyncio.wait_for(ev.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(ev)
                if not waiters:
                    del self._waiters[job_id]

    @contextmanager
    def slot(self, client: str, max_total: int, max_per_client: int):
        """Hold one of the open-stream places, or raise TooManyStreams."""
        with self._lock:
            if self.open >= max_total:
                raise TooManyStreams(f"the lab serves at most {max_total} event streams at once; close some tabs")
            if self.per_client[client] >= max_per_client:
                raise TooManyStreams(f"at most {max_per_client} event streams per client; close some tabs")
            self.open += 1
            self.per_client[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self.open -= 1
                self.per_client[client] -= 1
                if self.per_client[client] <= 0:
                    del self.per_client[client]


live = Streams()
