"""`make run` supervises its processes: `python -m backend.launch` as a real process, its children killed."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from backend.launch import STOP_GRACE_S, commands
from core.processes import alive
from core.settings import Settings
from tests.conftest import ROOT, env_for
from tests.lab import SLOW, free_port, wait_for

pytestmark = [pytest.mark.system]

HEARTBEAT_TIMEOUT_S = 6.0  # the watchdog gives a killed worker's job back after this long
BUSY = 4  # waits are stretched for a busy 2-core machine (see tests/system/test_reliability.py)
START_S = 120  # the backend and a worker starting (the worker imports torch) on a busy machine


class Launcher:
    def __init__(self, tmp, data_dir, **settings: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "launch.log"
        env = env_for(tmp / "home", **{
            "BLOCKLAB_PORT": str(self.port), "BLOCKLAB_DEVICE": "cpu", "BLOCKLAB_DATA_DIR": str(data_dir),
            "BLOCKLAB_ALLOW_DOWNLOAD": "false", "BLOCKLAB_HEARTBEAT_INTERVAL_S": "0.5",
            "BLOCKLAB_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S), "OMP_NUM_THREADS": "1", **settings})
        self.out = open(self.log, "ab")  # noqa: SIM115 - the launcher writes to it until close()
        self.p = subprocess.Popen([sys.executable, "-m", "backend.launch"], env=env, cwd=ROOT, stdout=self.out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10, headers={"X-Requested-With": "BlockLab"})
        self.seen: set[int] = set()

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def children(self, name: str) -> list[int]:
        """The launcher's live children running this part (read from /proc, not from what the launcher says)."""
        mark = commands(Settings())[name][2].encode() + b"\0"  # the module after -m: backend.serve, celery
        pids = []
        for task in os.listdir(f"/proc/{self.p.pid}/task"):
            with open(f"/proc/{self.p.pid}/task/{task}/children") as f:
                pids += [int(x) for x in f.read().split()]
        found = []
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if mark in f.read() and alive(pid):
                        found.append(pid)
            except FileNotFoundError:
                pass
        self.seen.update(found)
        return found

    def current(self, name: str, after: int | None = None) -> int:
        """The pid of the child running this part (another than `after`, if given), once there is one."""
        def one():
            pids = [p for p in self.children(name) if p != after]
            return len(pids) == 1 and pids[0]
        return wait_for(one, START_S, f"the launcher to run a {name}" + (f" after pid {after}" if after else ""))

    def healthy(self) -> bool:
        return self.client.get("/api/health").status_code == 200

    def metrics(self, jid) -> list[dict]:
        return self.client.get(f"/api/jobs/{jid}/metrics").json()

    def job(self, jid) -> dict:
        return self.client.get(f"/api/jobs/{jid}").json()

    def close(self):
        self.client.close()
        self.out.close()
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(10)
        for pid in self.seen:  # a failed test must not leave a lab running
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture
def launcher(tmp_path, tiny_cifar_dir):
    la = Launcher(tmp_path, tiny_cifar_dir)
    yield la
    print(la.text()[-6000:])  # pytest shows it beside a failure only
    la.close()


class _HealthWatch(threading.Thread):
    """Asks /api/health over and over until stopped; counts the answers that were not 200."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.stopped, self.ok, self.bad = url, threading.Event(), 0, []

    def run(self):
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stopped.is_set():
                try:
                    r = c.get("/api/health")
                    self.ok += r.status_code == 200
                    if r.status_code != 200:
                        self.bad.append(r.status_code)
                except httpx.HTTPError as e:
                    self.bad.append(type(e).__name__)
                self.stopped.wait(0.1)


def test_make_run_restarts_a_killed_worker_and_backend_and_ctrl_c_stops_everything(launcher):
    la = launcher
    backend, worker = la.current("backend"), la.current("worker")
    wait_for(la.healthy, START_S, "the backend to answer")
    r = la.client.post("/api/experiments", json={"name": "survives", "config": dict(SLOW, epochs=3)})
    assert r.status_code == 201, r.text
    jid = r.json()["jobs"][0]["id"]
    wait_for(lambda: la.metrics(jid) or la.job(jid)["status"] == "failed", START_S, "the job's first epoch")
    assert la.metrics(jid), la.job(jid)
    epoch_s = BUSY * la.metrics(jid)[0]["seconds"]

    # The worker dies mid-job: it is started again, the backend answers throughout, the job finishes.
    watch = _HealthWatch(la.url)
    watch.start()
    os.kill(worker, signal.SIGKILL)
    worker2 = la.current("worker", after=worker)
    job = wait_for(lambda: (j := la.job(jid))["status"] in ("succeeded", "failed") and j,
                   BUSY * HEARTBEAT_TIMEOUT_S + START_S + 3 * epoch_s, "the job to finish")
    watch.stopped.set()
    watch.join(30)
    assert job["status"] == "succeeded", job
    assert [m["epoch"] for m in la.metrics(jid)] == [1, 2, 3]
    assert watch.ok > 0 and watch.bad == [], f"the backend stopped answering while the worker restarted: {watch.bad}"
    assert la.children("backend") == [backend]
    assert re.search(rf"started the worker \(pid {worker2}\)", la.text())
    assert re.search(rf"the worker \(pid {worker}\) stopped \(killed by SIGKILL\); restarting it in \d+ s", la.text())

    # The backend dies: it is started again, the worker lives on.
    os.kill(backend, signal.SIGKILL)
    backend2 = la.current("backend", after=backend)
    wait_for(la.healthy, START_S, "the restarted backend to answer")
    assert la.children("worker") == [worker2]
    assert re.search(rf"the backend \(pid {backend}\) stopped \(killed by SIGKILL\); restarting it", la.text())

    # Ctrl-C: everything stops, promptly, nothing left behind.
    t0 = time.monotonic()
    os.kill(la.p.pid, signal.SIGINT)
    la.p.wait(60)
    took = time.monotonic() - t0
    left = [pid for pid in la.seen if alive(pid)]
    print(f"\nmake run: worker {worker} killed -> restarted as {worker2}, job {job['status']} (attempt "
          f"{job['attempt']}), health {watch.ok}/{watch.ok + len(watch.bad)} answered during the restart; backend "
          f"{backend} killed -> restarted as {backend2}; Ctrl-C stopped all in {took:.1f} s, {len(left)} left")
    assert la.p.returncode == 0 and left == [] and took < STOP_GRACE_S + 10
    for pid in la.seen:  # nothing any child spawned either
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
