"""`make run`: the backend and one Celery worker on this machine, on embedded defaults (SQLite for the
database and the broker; Redis when REDIS_URL is set). Ctrl-C stops both."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from core.settings import get_settings


def commands(settings) -> dict[str, list[str]]:
    py = sys.executable
    return {
        "backend": [py, "-m", "uvicorn", "backend.app.main:app", "--host", settings.host, "--port",
                    str(settings.port), "--log-level", "info"],
        # One worker per GPU: one job at a time, fetched one at a time.
        "worker": [py, "-m", "celery", "-A", "worker.queue.celery_app", "worker", "-Q", "gpu", "--pool", "solo",
                   "--concurrency", "1", "--prefetch-multiplier", "1", "-n", f"worker-{settings.port}@%h",
                   "--loglevel", "INFO"],
    }


def main() -> int:
    s = get_settings()
    s.home.mkdir(parents=True, exist_ok=True)
    procs = {name: subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)
             for name, cmd in commands(s).items()}
    print(f"\nBlockLab: http://{s.host}:{s.port}/  (state in {s.home.resolve()}, broker "
          f"{'Redis' if s.redis_url else 'SQLite'}; Ctrl-C stops)\n", flush=True)

    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    code = 0
    while not stopping:
        for name, p in procs.items():
            if p.poll() is not None:
                print(f"BlockLab: the {name} exited with code {p.returncode}; stopping", flush=True)
                stopping, code = True, p.returncode or 1
        time.sleep(0.3)
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs.values():
        try:
            p.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
    print("BlockLab: stopped", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
