"""`make run`: the backend and one Celery worker on this machine, on embedded defaults (SQLite for the
database and the broker; Redis when REDIS_URL is set), supervised.

A child that dies is started again after a backoff (1 s, doubling to 30 s; back to 1 s once it has run a
minute), and the other keeps serving meanwhile. A worker's death is told to the backend before its successor
starts (a `worker_lost` event), so its job is requeued at once, ahead of the jobs that never started, and the
fresh worker takes it first (without that word the backend's heartbeat watchdog requeues it, a minute later); a
restarted backend finds the events that waited in the broker. Ctrl-C or SIGTERM stops
both: SIGTERM, then SIGKILL for what still runs after a few seconds (a job in progress resumes from its last
checkpoint on the next start). Each child has a session of its own, so a terminal's Ctrl-C reaches only us,
and asks the kernel to end it should we die without stopping it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from core.protocol import worker_command, worker_label
from core.settings import get_settings

RESTART_MIN_S, RESTART_MAX_S = 1.0, 30.0
STABLE_S = 60.0  # a child that ran this long was healthy: its next restart waits RESTART_MIN_S again
STOP_GRACE_S = 8.0  # from SIGTERM to SIGKILL when stopping
POLL_S = 0.2


def say(msg: str) -> None:
    print(f"BlockLab: {msg}", flush=True)


def commands(settings) -> dict[str, list[str]]:
    py = sys.executable
    return {
        # As the tests run it: uvicorn on settings.host:port, with a timeout for half-open connections.
        "backend": [py, "-m", "backend.serve"],
        # One worker per GPU: one job at a time, fetched one at a time.
        "worker": worker_command(py, worker_node(settings)),
    }


def worker_node(settings) -> str:
    """The supervised worker's Celery node name (its %h the host name, as Celery expands it)."""
    return f"worker-{settings.port}@%h"


def die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM when the launcher dies, even by SIGKILL: no orphans."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def tell_worker_lost(settings, pid: int, how: str) -> None:
    """Tell the backend (through the broker, as workers do) that the worker process `pid` ended."""
    import socket

    from core.broker import announce, transport_options
    node = worker_node(settings).replace("%h", socket.gethostname())  # as Celery expands it
    try:
        announce(settings.broker_url, transport_options(settings.broker_url, settings.visibility_timeout_s),
                 "worker_lost", worker=worker_label(node, pid), why=f"its worker process ended ({how})")
    except Exception as e:  # noqa: BLE001 - without the word, the heartbeat watchdog requeues its job later
        say(f"could not tell the backend that the worker ended ({type(e).__name__}: {e}); its job is requeued "
            f"after the heartbeat timeout ({settings.heartbeat_timeout_s:.0f} s)")


class Child:
    """One supervised process: started, watched, restarted with backoff, stopped. `on_exit(pid, how)` is called
    when it has ended, before its restart is scheduled."""

    def __init__(self, name: str, cmd: list[str], on_exit=None):
        self.name, self.cmd, self.on_exit = name, cmd, on_exit
        self.p: subprocess.Popen | None = None
        self.started_at = 0.0
        self.delay = 0.0  # the backoff used for the last restart
        self.restart_at: float | None = None

    def start(self) -> None:
        # preexec_fn is unsafe only beside threads; the launcher has none.
        die_with_us = die_with_parent if sys.platform == "linux" else None
        self.p = subprocess.Popen(self.cmd, env=os.environ.copy(), start_new_session=True,
                                  preexec_fn=die_with_us)  # noqa: PLW1509
        self.started_at, self.restart_at = time.monotonic(), None
        say(f"started the {self.name} (pid {self.p.pid})")

    def watch(self, now: float) -> None:
        """Notice an exit and schedule the restart; start it when its time has come."""
        if self.restart_at is None and self.p is not None and self.p.poll() is not None:
            stable = now - self.started_at >= STABLE_S
            self.delay = RESTART_MIN_S if stable or not self.delay else min(self.delay * 2, RESTART_MAX_S)
            self.restart_at = now + self.delay
            say(f"the {self.name} (pid {self.p.pid}) stopped ({_exit_text(self.p.returncode)}); "
                f"restarting it in {self.delay:.0f} s")
            if self.on_exit is not None:
                self.on_exit(self.p.pid, _exit_text(self.p.returncode))
        if self.restart_at is not None and now >= self.restart_at:
            self.start()

    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def signal_group(self, sig: int) -> None:
        """The child's whole session (it was started as its leader), so nothing it spawned outlives it."""
        if self.p is None:
            return
        try:
            os.killpg(self.p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_all(children: list[Child], grace_s: float = STOP_GRACE_S) -> None:
    for c in children:
        if c.alive():
            c.signal_group(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any(c.alive() for c in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    for c in children:
        if c.alive():
            say(f"the {c.name} did not stop within {grace_s:.0f} s; killing it")
        c.signal_group(signal.SIGKILL)  # also whatever it left in its group
        if c.p is not None:
            c.p.wait()


def main() -> int:
    s = get_settings()
    s.home.mkdir(parents=True, exist_ok=True)
    stopping = []

    def stop(signum, _frame):
        if stopping:  # a second Ctrl-C: no more waiting
            raise KeyboardInterrupt
        stopping.append(signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    lost = {"worker": lambda pid, how: tell_worker_lost(s, pid, how)}
    children = [Child(name, cmd, lost.get(name)) for name, cmd in commands(s).items()]
    try:
        for c in children:
            c.start()
        say(f"http://{s.host}:{s.port}/  (state in {s.home.resolve()}, broker "
            f"{'Redis' if s.redis_url else 'SQLite'}; Ctrl-C stops)")
        while not stopping:
            now = time.monotonic()
            for c in children:
                c.watch(now)
            time.sleep(POLL_S)
        say("stopping")
        stop_all(children)
    except KeyboardInterrupt:
        stop_all(children, grace_s=0)
    say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
