"""Status changes are conditional updates on (status, attempt): of requests that race, exactly one wins, and only
the winner sends the job to the broker."""
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import pytest

from backend.app import queue
from backend.app.ingest import handle_event

from .conftest import TINY


def _job(api) -> int:
    r = api.post("/api/experiments", json={"name": "race", "config": TINY})
    assert r.status_code == 201, r.text
    return r.json()["jobs"][0]["id"]


@pytest.mark.slow
def test_thirty_concurrent_resumes_accept_exactly_one_each_time(api, monkeypatch):
    sent = []
    monkeypatch.setattr(queue, "dispatch", lambda job_id, attempt, config, ahead=False, place=None: sent.append((job_id, attempt)))
    jid = _job(api)
    trials, racers = 100, 30
    accepted = []
    with ThreadPoolExecutor(racers) as pool:
        for trial in range(trials):
            assert api.post(f"/api/jobs/{jid}/cancel").status_code == 200
            sent.clear()
            gate = Barrier(racers)

            def resume(_):
                gate.wait()
                return api.post(f"/api/jobs/{jid}/resume").status_code
            codes = list(pool.map(resume, range(racers)))
            accepted.append(codes.count(200))
            assert sorted(set(codes)) == [200, 409], codes
            assert len(sent) == 1, (trial, sent)  # one run sent to the workers
            job = api.get(f"/api/jobs/{jid}").json()
            assert job["status"] == "queued" and job["attempt"] == trial + 2
    print(f"\n{trials} trials of {racers} concurrent resumes: accepted {set(accepted)} per trial")
    assert accepted == [1] * trials


def test_a_cancel_stops_the_job_whichever_attempt_runs(api, monkeypatch):
    cancels = []
    monkeypatch.setattr(queue, "cancel", lambda job_id, attempt: cancels.append(attempt))
    jid = _job(api)
    api.post(f"/api/jobs/{jid}/cancel")
    api.post(f"/api/jobs/{jid}/resume")  # attempt 2
    handle_event({"type": "started", "job_id": jid, "attempt": 2, "ts": 0, "worker": "w", "device": "cpu"})
    r = api.post(f"/api/jobs/{jid}/cancel")
    assert r.json()["status"] == "cancelling" and cancels[-1] == 2  # told to the attempt that runs
    handle_event({"type": "finished", "job_id": jid, "attempt": 1, "ts": 0, "status": "succeeded"})  # stale
    assert api.get(f"/api/jobs/{jid}").json()["status"] == "cancelling"
    handle_event({"type": "finished", "job_id": jid, "attempt": 2, "ts": 0, "status": "cancelled"})
    assert api.get(f"/api/jobs/{jid}").json()["status"] == "cancelled"


def test_a_queued_cancel_wins_over_a_late_start(api):
    """The worker's "started" arrives after the user cancelled the queued job: the job stays cancelled."""
    jid = _job(api)
    assert api.post(f"/api/jobs/{jid}/cancel").json()["status"] == "cancelled"
    handle_event({"type": "started", "job_id": jid, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    assert api.get(f"/api/jobs/{jid}").json()["status"] == "cancelled"
