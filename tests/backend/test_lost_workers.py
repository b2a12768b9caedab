"""A job whose worker process is known to be gone goes back at once, ahead of the jobs that never started: on the
supervisor's word (a `worker_lost` event) or a fresh process's first report under the same worker name. A queued
job the broker lost is sent again, in its place, as a new attempt; the lost attempt, should it turn up, is told to
stop."""
from backend.app import queue
from backend.app.ingest import handle_event
from core.protocol import worker_label

from .conftest import TINY


def _running(api, worker: str) -> dict:
    jid = api.post("/api/experiments", json={"name": "lost", "config": TINY}).json()["jobs"][0]["id"]
    handle_event({"type": "started", "job_id": jid, "attempt": 1, "worker": worker, "device": "cpu"})
    job = api.get(f"/api/jobs/{jid}").json()
    assert job["status"] == "running"
    return job


def _spy(monkeypatch) -> list:
    sent = []
    monkeypatch.setattr(queue, "dispatch", lambda job_id, attempt, config, ahead=False, place=None:
                        sent.append((job_id, attempt, ahead)))
    monkeypatch.setattr(queue, "cancel", lambda job_id, attempt, force=False: sent.append(("cancel", job_id, attempt)))
    return sent


def test_the_supervisors_word_requeues_the_job_ahead_at_once(api, monkeypatch):
    sent = _spy(monkeypatch)
    job = _running(api, worker_label("worker-8000@host", 41))
    other = _running(api, worker_label("worker-8000@host", 77))  # another live process: untouched
    waiting = api.post("/api/experiments", json={"name": "never started", "config": TINY}).json()["jobs"][0]
    sent.clear()
    handle_event({"type": "worker_lost", "worker": worker_label("worker-8000@host", 41),
                  "why": "its worker process ended (killed by SIGKILL)"})
    after = api.get(f"/api/jobs/{job['id']}").json()
    assert after["status"] == "queued" and after["attempt"] == 2
    assert (job["id"], 2, True) in sent and ("cancel", job["id"], 1) in sent
    assert after["queue_position"] < api.get(f"/api/jobs/{waiting['id']}").json()["queue_position"]
    assert api.get(f"/api/jobs/{other['id']}").json()["status"] == "running"


def test_a_fresh_workers_first_report_requeues_its_predecessors_job(api, monkeypatch):
    sent = _spy(monkeypatch)
    job = _running(api, worker_label("w1@host", 41))
    elsewhere = _running(api, worker_label("w10@host", 41))  # another name that merely starts alike
    sent.clear()
    handle_event({"type": "worker", "ts": 1.0, "worker": {"name": "w1@host", "pid": 42}})
    assert api.get(f"/api/jobs/{job['id']}").json()["status"] == "queued"
    assert (job["id"], 2, True) in sent
    assert api.get(f"/api/jobs/{elsewhere['id']}").json()["status"] == "running"
    handle_event({"type": "worker", "ts": 2.0, "worker": {"name": "w1@host", "pid": 42}})  # its own: nothing
    assert len([s for s in sent if s[0] == job["id"]]) == 1


def test_a_lost_attempt_that_turns_up_is_told_to_stop(api, monkeypatch):
    from backend.app import jobs
    from backend.app.db import session_scope
    from backend.app.models import Job
    sent = _spy(monkeypatch)
    jid = api.post("/api/experiments", json={"name": "resent", "config": TINY}).json()["jobs"][0]["id"]
    before = api.get(f"/api/jobs/{jid}").json()
    with session_scope() as db:
        assert jobs.resend_lost(db, db.get(Job, jid))
    after = api.get(f"/api/jobs/{jid}").json()
    assert after["status"] == "queued" and after["attempt"] == 2 and (jid, 2, True) in sent
    assert after["queue_position"] == before["queue_position"]  # its place kept
    sent.clear()
    handle_event({"type": "started", "job_id": jid, "attempt": 1, "worker": "w@h pid 1", "device": "cpu"})
    assert api.get(f"/api/jobs/{jid}").json()["status"] == "queued"  # the stale attempt speaks for nothing
    assert sent == [("cancel", jid, 1)]
