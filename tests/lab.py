"""A whole lab of real processes for the tests: the backend (uvicorn), `celery worker` and `redis-server` on
loopback."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from core.protocol import worker_command
from tests.conftest import ROOT, env_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    """Poll until predicate() is truthy (returns it), or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (httpx.HTTPError, OSError) as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict, log: Path):
        self.name, self.cmd, self.env, self.log = name, cmd, env, log
        self.p: subprocess.Popen | None = None

    def start(self):
        fh = open(self.log, "ab")
        self.p = subprocess.Popen(self.cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                  cwd=ROOT, start_new_session=True)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=20):
        if self.p and self.p.poll() is None:
            os.killpg(self.p.pid, sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)

    def kill9(self):
        self.stop(signal.SIGKILL)


class Supervisor(threading.Thread):
    """Starts a worker again whenever it exits, as `make run`'s launcher (backend/launch.py) and docker's restart
    policy do; `restarted` counts the restarts and is signalled at each."""

    def __init__(self, proc: Proc):
        super().__init__(daemon=True, name=f"supervise-{proc.name}")
        self.proc, self.restarts, self.closing, self.restarted = proc, 0, threading.Event(), threading.Condition()

    def run(self):
        while not self.closing.is_set():
            try:
                self.proc.p.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                continue
            if self.closing.is_set():
                return
            self.proc.start()
            with self.restarted:
                self.restarts += 1
                self.restarted.notify_all()

    def wait_restarts(self, n: int, timeout: float) -> None:
        with self.restarted:
            if not self.restarted.wait_for(lambda: self.restarts >= n, timeout):
                raise AssertionError(f"the worker was not restarted {n} time(s) within {timeout} s")


class Lab:
    """A whole BlockLab on loopback: backend, workers, optional Redis, one home folder."""

    def __init__(self, tmp: Path, data_dir: Path, redis: bool, redis_args: tuple[str, ...] = ()):
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[Proc] = []
        self.supervisors: list[Supervisor] = []
        extra = {"BLOCKLAB_DATA_DIR": str(data_dir), "BLOCKLAB_PORT": str(self.port),
                 "BLOCKLAB_HEARTBEAT_INTERVAL_S": "0.5", "BLOCKLAB_HEARTBEAT_TIMEOUT_S": "6",
                 "BLOCKLAB_DEVICE": "cpu", "BLOCKLAB_ALLOW_DOWNLOAD": "false", "OMP_NUM_THREADS": "1",
                 "BLOCKLAB_CONTROL_POLL_S": "0.2", "BLOCKLAB_CANCEL_GRACE_S": "10"}
        self.redis: Proc | None = None
        if redis:
            rport = free_port()
            exe = shutil.which("redis-server")
            assert exe, "redis-server is not installed (.ci/run installs it)"
            self.redis = Proc("redis", [exe, "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                        "--appendonly", "no", "--dir", str(tmp), *redis_args], os.environ.copy(),
                              tmp / "redis.log")
            self.redis.start()
            extra["REDIS_URL"] = f"redis://127.0.0.1:{rport}/0"
            wait_for(lambda: _ping(rport), 10, "redis-server")
        self.env = env_for(tmp / "home", **extra)
        self.backend = self._proc("backend", [sys.executable, "-m", "backend.serve"])  # BLOCKLAB_PORT above
        self.client = httpx.Client(base_url=self.url, timeout=10, headers={"X-Requested-With": "BlockLab"})

    def _proc(self, name, cmd) -> Proc:
        p = Proc(name, cmd, self.env, self.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    def start_backend(self):
        self.backend.start()
        wait_for(lambda: self.client.get("/api/health").status_code == 200, 30, "backend health")

    def new_worker(self, n: int = 1, supervised: bool = False) -> Proc:
        """A worker process; `supervised`: started again whenever it exits (`lab.supervisors[-1]`)."""
        # With faults asked for, the lab's own app with the test's fault hooks installed (tests/faults.py).
        app = "tests.faults" if self.env.get("BLOCKLAB_TEST_FAULTS") else "worker.queue.celery_app"
        p = self._proc(f"worker{n}", worker_command(sys.executable, f"w{n}@%h", app=app)).start()
        if supervised:
            self.supervisors.append(Supervisor(p))
            self.supervisors[-1].start()
        return p

    def submit(self, name="job", **cfg) -> int:
        r = self.client.post("/api/experiments", json={"name": name, "config": cfg})
        assert r.status_code == 201, r.text
        return r.json()["jobs"][0]["id"]

    def job(self, jid) -> dict:
        return self.client.get(f"/api/jobs/{jid}").json()

    def epochs(self, jid) -> list[int]:
        return [m["epoch"] for m in self.client.get(f"/api/jobs/{jid}/metrics").json()]

    def wait_status(self, jid, statuses, timeout=180):
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        return wait_for(lambda: (j := self.job(jid))["status"] in statuses and j, timeout,
                        f"job {jid} to reach {statuses}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.log.read_text(errors='replace')[-4000:]}"
                         for p in self.procs if p.log.exists())

    def close(self):
        self.client.close()
        for s in self.supervisors:
            s.closing.set()
        for s in self.supervisors:
            s.join(5)
        for p in reversed(self.procs):
            p.stop()
        if self.redis:
            self.redis.stop()


def _ping(port) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


# A job small enough for two CPU cores, slow enough (no feature cache) to be interrupted mid-run.
SLOW = {"model": "deit_tiny_patch16_224", "weights": "none", "batch_size": 16, "image_size": 96,
        "val_limit": 40, "feature_cache": False, "precision": "fp32"}
QUICK = {"model": "deit_tiny_patch16_224", "weights": "none", "batch_size": 32, "image_size": 32,
         "val_limit": 40, "epochs": 2}
