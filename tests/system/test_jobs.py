"""End to end with real processes, on the embedded SQLite broker and on a real Redis."""
import json
import time

import httpx
import pytest

from core.protocol import PHASE_UNITS, Phase
from tests.lab import QUICK, SLOW, wait_for

pytestmark = pytest.mark.system


def test_small_job_runs_end_to_end(lab):
    lab.new_worker()
    jid = lab.submit("tiny", **QUICK)
    delays = []
    with httpx.Client(base_url=lab.url, timeout=None) as c, c.stream("GET", f"/api/jobs/{jid}/events") as r:
        kinds, phases = [], []
        for line in r.iter_lines():
            if line.startswith("event: "):
                kinds.append(line[7:])
            elif line.startswith("data: ") and kinds and kinds[-1] == "epoch":
                delays.append(json.loads(line[6:])["delay_s"])
            elif line.startswith("data: ") and kinds and kinds[-1] == "progress":
                p = json.loads(line[6:])["progress"]
                phases.append(p and (p["phase"], p["unit"]))
            if kinds and kinds[-1] == "end":
                break
    print(f"\nepoch delivery, worker -> database: {', '.join(f'{d:.2f} s' for d in delays)}")
    assert all(0 <= d < 2.0 for d in delays)  # every epoch reaches the backend within about 2 seconds
    job = lab.job(jid)
    assert job["status"] == "succeeded", lab.logs()
    assert kinds.count("epoch") == 2 and "progress" in kinds
    assert lab.epochs(jid) == [1, 2]
    assert job["worker"] and job["device"].startswith("cpu") and job["info"]["trainable_params"] > 0
    # What ran, each attempt, where the time went; progress went through named phases, each with its unit.
    assert job["settings"]["precision"] == "fp32" and job["settings"]["image_size"] == QUICK["image_size"]
    assert job["settings"]["device"].startswith("cpu") and job["settings"]["train_images"] > 0
    assert [(a["attempt"], a["outcome"]) for a in job["attempts"]] == [(1, "succeeded")]
    assert job["attempts"][0]["worker"] == job["worker"] and job["progress"] is None and not job["dry_run"]
    t = job["timings"]
    assert t["total_s"] >= t["train_s"] > 0 and t["setup_s"] is not None and t["queued_s"] >= 0
    seen = {ph for ph, _unit in filter(None, phases)}
    assert seen and seen <= {p.value for p in Phase}, phases  # the stream shows the newest at each look
    assert all(unit == PHASE_UNITS[Phase(ph)] for ph, unit in filter(None, phases))


def test_cancel_stops_a_running_job_then_resume_finishes_it(lab):
    lab.new_worker()
    jid = lab.submit("long", **SLOW, epochs=40)
    wait_for(lambda: lab.epochs(jid), 120, "a first epoch")
    queued = lab.submit("queued-then-cancelled", **QUICK)  # waits behind the long job: one job per worker
    assert lab.client.post(f"/api/jobs/{queued}/cancel").json()["status"] == "cancelled"
    t0 = time.monotonic()
    assert lab.client.post(f"/api/jobs/{jid}/cancel").json()["status"] == "cancelling"
    cancelled = lab.wait_status(jid, "cancelled", timeout=30)
    print(f"\ncancel took {time.monotonic() - t0:.1f} s")
    assert time.monotonic() - t0 < 15 and cancelled["attempt"] == 1
    before = lab.client.get(f"/api/jobs/{jid}/metrics").json()
    done = [m["epoch"] for m in before]
    assert done == list(range(1, len(done) + 1)) and len(done) < 40
    run_dir = lab.tmp / "home" / "runs" / f"job-{jid}"
    lines_before = (run_dir / "metrics.jsonl").read_text().splitlines()
    # Resume: the job continues from its checkpoint as attempt 2.
    assert lab.client.post(f"/api/jobs/{jid}/resume").json()["status"] == "queued"
    wait_for(lambda: len(lab.epochs(jid)) > len(done), 120, "an epoch after resume")
    lab.client.post(f"/api/jobs/{jid}/cancel")
    final = lab.wait_status(jid, "cancelled", timeout=30)
    after = lab.client.get(f"/api/jobs/{jid}/metrics").json()
    assert [m["epoch"] for m in after] == list(range(1, len(after) + 1))  # each epoch once, none repeated
    assert after[:len(done)] == before  # the finished epochs were kept as they were...
    lines_after = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert lines_after[:len(lines_before)] == lines_before  # ...and not recomputed: the engine resumed after them
    assert f"resuming {run_dir} after epoch {len(done)}" in (lab.tmp / "worker1.log").read_text()
    assert final["attempt"] == 2
    # The worker took the cancelled job before the resumed one, and never started it.
    assert lab.job(queued)["status"] == "cancelled" and lab.epochs(queued) == []
    assert lab.job(queued)["started_at"] is None


def test_worker_killed_mid_job_then_new_worker_finishes_it(lab):
    w = lab.new_worker(1)
    jid = lab.submit("kill", **SLOW, epochs=4)
    wait_for(lambda: lab.epochs(jid), 120, "a first epoch")
    w.kill9()
    lab.new_worker(2)
    job = lab.wait_status(jid, ("succeeded", "failed"), timeout=240)
    assert job["status"] == "succeeded", (job, lab.logs())
    assert lab.epochs(jid) == [1, 2, 3, 4] and job["attempt"] >= 2


def test_backend_restart_during_a_job_loses_no_epoch(lab):
    lab.new_worker()
    jid = lab.submit("restart", **SLOW, epochs=4)
    wait_for(lambda: lab.epochs(jid), 120, "a first epoch")
    lab.backend.stop()
    run_dir = lab.tmp / "home" / "runs" / f"job-{jid}"
    # While the backend is down the worker goes on; its epochs wait in the broker.
    wait_for(lambda: len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 3, 120, "epochs while down")
    lab.start_backend()
    job = lab.wait_status(jid, ("succeeded", "failed"), timeout=180)
    assert job["status"] == "succeeded", lab.logs()
    assert lab.epochs(jid) == [1, 2, 3, 4]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    stored = lab.client.get(f"/api/jobs/{jid}/metrics").json()
    assert [r["val_acc"] for r in rows] == pytest.approx([m["val_acc"] for m in stored])
