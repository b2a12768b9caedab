"""The queue is bounded: creating and reproducing past BLOCKLAB_MAX_QUEUED_JOBS is a 429 that says what to do,
never a flood of queued jobs; each Table 1 request gets a group of its own; and reproduce refuses a model."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from core.settings import get_settings

from .conftest import TINY

TABLE1 = 10  # the paper's models: one reproduce queues this many jobs


def _queued(api) -> int:
    return sum(j["status"] == "queued" for e in api.get("/api/experiments").json() for j in e["jobs"])


def test_twenty_concurrent_reproduces_queue_only_what_the_limit_allows_each_in_its_own_group(api, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_queued_jobs", 25)
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: api.post("/api/reproduce", json={"overrides": {"epochs": 1}}),
                                range(20)))
    ok = [r for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) == 2 and len(refused) == 18, [r.status_code for r in answers]
    detail = refused[0].json()["detail"]
    assert "BLOCKLAB_MAX_QUEUED_JOBS" in detail and "25" in detail and "cancel" in detail
    assert _queued(api) == 2 * TABLE1  # a refusal stores nothing: no experiment without its job
    assert len(api.get("/api/experiments").json()) == 2 * TABLE1
    groups = [{e["group"] for e in r.json()} for r in ok]
    assert all(len(g) == 1 for g in groups) and groups[0] != groups[1]


def test_generated_group_names_are_unique_within_one_second(api):
    groups = {api.post("/api/reproduce", json={"dry_run": True}).json()[0]["group"] for _ in range(3)}
    assert len(groups) == 3


def test_creating_experiments_stops_at_the_limit_and_resumes_when_there_is_room(api, monkeypatch):
    monkeypatch.setattr(get_settings(), "max_queued_jobs", 2)
    ids = [api.post("/api/experiments", json={"name": f"e{i}", "config": TINY}).json()["jobs"][0]["id"]
           for i in range(2)]
    r = api.post("/api/experiments", json={"name": "third", "config": TINY})
    assert r.status_code == 429 and "BLOCKLAB_MAX_QUEUED_JOBS" in r.json()["detail"]
    assert [e["name"] for e in api.get("/api/experiments").json()] == ["e1", "e0"]
    # An experiment stored without a job (start: false) is no job: it may still be created, not started.
    idle = api.post("/api/experiments", json={"name": "later", "config": TINY, "start": False}).json()
    assert api.post(f"/api/experiments/{idle['id']}/jobs").status_code == 429
    assert api.post(f"/api/jobs/{ids[0]}/cancel").status_code == 200
    assert api.post(f"/api/experiments/{idle['id']}/jobs").status_code == 201


def test_reproduce_refuses_a_model_override_naming_the_field(api):
    r = api.post("/api/reproduce", json={"overrides": {"model": "resnet50", "epochs": 1}})
    assert r.status_code == 422, r.text
    err = r.json()["detail"][0]
    assert err["loc"] == ["body", "overrides", "model"] and "overrides.model" in err["msg"]
    assert api.get("/api/experiments").json() == []
