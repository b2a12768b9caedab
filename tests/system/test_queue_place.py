"""A job keeps its place in the queue when a worker or the broker loses it, with real processes: a SIGKILLed
worker's job runs again before the jobs that never started (the supervisor tells the backend at once, no heartbeat
timeout), and the jobs a Redis restarted without its data forgot are sent again, in their order, each run once.
Each test prints its figure."""
from __future__ import annotations

import os
import signal
import time

import pytest

from core.settings import Settings
from tests.lab import QUICK, SLOW, Lab, _ping, wait_for
from tests.test_launch import START_S, Launcher

pytestmark = pytest.mark.system


def _started(job: dict) -> list[str]:
    """When each attempt of the job started (None for one that never did)."""
    return [a["started_at"] for a in job["attempts"]]


def test_a_killed_workers_job_runs_again_before_the_jobs_that_never_started(tmp_path, tiny_cifar_dir):
    heartbeat_timeout_s = 600  # far beyond this test: only the supervisor's word can bring the job back
    la = Launcher(tmp_path, tiny_cifar_dir, BLOCKLAB_HEARTBEAT_TIMEOUT_S=str(heartbeat_timeout_s))
    try:
        worker = la.current("worker")
        wait_for(la.healthy, START_S, "the backend to answer")
        def post(name, cfg):
            return la.client.post("/api/experiments", json={"name": name, "config": cfg}).json()
        a = post("killed", dict(SLOW, epochs=3))["jobs"][0]["id"]
        wait_for(lambda: la.job(a)["status"] == "running", START_S, "the first job to start")
        waiting = [post(f"never started {i}", QUICK)["jobs"][0]["id"] for i in range(2)]
        t0 = time.monotonic()
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: la.job(a)["attempt"] == 2, START_S, "the killed worker's job to be requeued")
        requeued = time.monotonic() - t0
        la.current("worker", after=worker)
        job = wait_for(lambda: (j := la.job(a))["attempt"] == 2 and j["status"] != "queued" and j, START_S,
                       "the killed worker's job to run again")
        took = time.monotonic() - t0
        others = [la.job(w)["status"] for w in waiting]
        print(f"\nworker SIGKILLed mid-job: its job requeued {requeued:.1f} s later and running again (attempt 2, "
              f"on the restarted worker) {took:.1f} s later, before the {len(waiting)} jobs queued behind it "
              f"({others}); heartbeat timeout {heartbeat_timeout_s} s")
        assert job["status"] in ("running", "succeeded"), job
        assert others == ["queued", "queued"]
    finally:
        for jid in la.client.get("/api/jobs").json():
            la.client.post(f"/api/jobs/{jid['id']}/cancel")
        la.close()


@pytest.mark.redis
def test_jobs_a_restarted_redis_forgot_are_sent_again_in_order_and_run_once(tmp_path, tiny_cifar_dir):
    reconcile_s = Settings().reconcile_s  # the default: the figure is the lab's as shipped
    lab = Lab(tmp_path, tiny_cifar_dir, redis=True)
    try:
        lab.start_backend()
        forgotten = [lab.submit(f"forgotten {i}", **QUICK) for i in range(2)]
        # Redis restarts without its data (no AOF, no snapshot): the two waiting tasks are gone.
        lab.redis.kill9()
        lab.redis.start()
        wait_for(lambda: _ping(int(lab.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])), 10, "redis again")
        t0 = time.monotonic()
        later = lab.submit("queued after the restart", **QUICK)
        wait_for(lambda: all(lab.job(j)["attempt"] == 2 for j in forgotten), 6 * reconcile_s + 30,
                 "the forgotten jobs to be sent again")
        took = time.monotonic() - t0
        lab.new_worker()
        order = forgotten + [later]
        for jid in order:
            assert lab.wait_status(jid, {"succeeded", "failed"}, timeout=300)["status"] == "succeeded"
        jobs = [lab.job(j) for j in order]
        starts = [[s for s in _started(j) if s] for j in jobs]
        print(f"\nRedis restarted without its data: its 2 queued jobs were sent again {took:.1f} s later "
              f"(reconcile every {reconcile_s:g} s); all 3 ran once each, in their order")
        assert [len(s) for s in starts] == [1, 1, 1], starts  # never twice
        assert [s[0] for s in starts] == sorted(s[0] for s in starts)  # the forgotten first, in their order
        assert all(lab.epochs(j) == [1, 2] for j in order)
    finally:
        lab.close()
