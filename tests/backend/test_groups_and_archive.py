"""A group is cancelled or resumed at once; experiments are archived (hidden, data kept) or deleted (a live job
refuses, saying why); a name of only spaces is refused."""
from backend.app.ingest import handle_event

from .conftest import TINY


def _exp(api, name="e", group="g", start=True):
    r = api.post("/api/experiments", json={"name": name, "group": group, "config": TINY, "start": start})
    assert r.status_code == 201, r.text
    return r.json()


def test_a_group_is_cancelled_and_resumed_at_once(api):
    a, b, c = (_exp(api, f"e{i}") for i in range(3))
    _exp(api, "other", group="h")
    handle_event({"type": "started", "job_id": b["jobs"][0]["id"], "attempt": 1, "ts": 0, "worker": "w",
                  "device": "cpu"})
    r = api.post("/api/groups/g/cancel").json()
    assert sorted(r["changed"]) == sorted(e["jobs"][0]["id"] for e in (a, b, c)) and r["unchanged"] == {}
    statuses = {j["id"]: j["status"] for j in api.get("/api/jobs").json()}
    assert statuses[a["jobs"][0]["id"]] == "cancelled" and statuses[b["jobs"][0]["id"]] == "cancelling"
    assert [j["status"] for j in api.get("/api/jobs").json() if j["experiment_name"] == "other"] == ["queued"]
    handle_event({"type": "finished", "job_id": b["jobs"][0]["id"], "attempt": 1, "ts": 0, "status": "cancelled"})
    r = api.post("/api/groups/g/resume").json()
    assert len(r["changed"]) == 3
    assert {j["status"] for j in api.get("/api/jobs").json()} == {"queued"}
    again = api.post("/api/groups/g/resume").json()  # nothing left to resume: each says why
    assert again["changed"] == [] and all("only a cancelled or failed job" in v for v in again["unchanged"].values())
    assert api.post("/api/groups/nope/cancel").status_code == 404
    assert api.post("/api/groups/g/explode").status_code == 422


def test_archived_experiments_are_hidden_and_kept(api):
    e = _exp(api)
    jid = e["jobs"][0]["id"]
    assert api.patch(f"/api/experiments/{e['id']}", json={"archived": True}).json()["archived"] is True
    assert api.get("/api/experiments").json() == [] and api.get("/api/jobs").json() == []
    assert [x["id"] for x in api.get("/api/experiments?archived=true").json()] == [e["id"]]
    assert [j["id"] for j in api.get("/api/jobs?archived=true").json()] == [jid]
    assert api.get(f"/api/jobs/{jid}").status_code == 200  # still there
    api.patch(f"/api/experiments/{e['id']}", json={"archived": False})
    assert len(api.get("/api/experiments").json()) == 1


def test_delete_refuses_a_live_job_and_removes_a_finished_one(api):
    from core.settings import get_settings
    e = _exp(api)
    jid = e["jobs"][0]["id"]
    r = api.delete(f"/api/experiments/{e['id']}")
    assert r.status_code == 409 and f"job {jid}" in r.json()["detail"] and "cancel it first" in r.json()["detail"]
    api.post(f"/api/jobs/{jid}/cancel")
    run_dir = get_settings().runs_path / f"job-{jid}"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("{}\n")
    assert api.delete(f"/api/experiments/{e['id']}").status_code == 204
    assert api.get(f"/api/experiments/{e['id']}").status_code == 404 and api.get(f"/api/jobs/{jid}").status_code == 404
    assert not run_dir.exists()


def test_a_name_of_only_spaces_is_refused(api):
    for name in ("   ", "\t\n"):
        r = api.post("/api/experiments", json={"name": name, "config": TINY})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "name"
    assert api.post("/api/experiments", json={"name": "ok", "group": "  ", "config": TINY}).status_code == 422
    assert api.post("/api/experiments", json={"name": "  padded  ", "config": TINY}).json()["name"] == "padded"


def test_ids_are_never_reused_after_a_delete(api):
    e = _exp(api)
    jid = e["jobs"][0]["id"]
    api.post(f"/api/jobs/{jid}/cancel")
    assert api.delete(f"/api/experiments/{e['id']}").status_code == 204
    again = _exp(api)
    assert again["id"] > e["id"] and again["jobs"][0]["id"] > jid  # a deleted job's leftovers name no new job


def test_an_experiment_has_at_most_one_live_job(api):
    e = _exp(api)
    r = api.post(f"/api/experiments/{e['id']}/jobs")
    assert r.status_code == 409 and "still queued or running" in r.json()["detail"]
    api.post(f"/api/jobs/{e['jobs'][0]['id']}/cancel")
    assert api.post(f"/api/experiments/{e['id']}/jobs").status_code == 201


def test_group_names_a_url_can_carry(api):
    for group in ("a/b", "\x00", "  "):
        r = api.post("/api/experiments", json={"name": "x", "group": group, "config": TINY})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "group", group
        assert api.post("/api/reproduce", json={"group": group}).status_code == 422
    assert api.get("/api/experiments?archived=all").json() == []


def _race(fn_a, fn_b):
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier
    gate = Barrier(2)

    def go(fn):
        gate.wait()
        return fn()
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(go, fn_a), pool.submit(go, fn_b)
        return a.result(), b.result()


def test_deletes_racing_other_requests_never_give_a_500_nor_leave_a_hidden_job(api, monkeypatch):
    from backend.app import queue
    sent = []
    monkeypatch.setattr(queue, "dispatch", lambda job_id, attempt, config, ahead=False, place=None: sent.append(job_id))
    outcomes = set()
    for _ in range(12):
        e = _exp(api)
        jid = e["jobs"][0]["id"]
        api.post(f"/api/jobs/{jid}/cancel")
        rivals = [lambda: api.post(f"/api/jobs/{jid}/resume"), lambda: api.post(f"/api/experiments/{e['id']}/jobs"),
                  lambda: api.patch(f"/api/experiments/{e['id']}", json={"archived": True}),
                  lambda: api.delete(f"/api/experiments/{e['id']}"), lambda: api.get("/api/jobs"),
                  lambda: api.get("/api/experiments?archived=all"), lambda: api.get(f"/api/jobs/{jid}"),
                  lambda: api.get(f"/api/compare.csv?jobs={jid}")]
        for rival in rivals:
            if api.get(f"/api/experiments/{e['id']}").status_code == 404:
                break
            sent.clear()
            d, r = _race(lambda: api.delete(f"/api/experiments/{e['id']}"), rival)
            assert d.status_code in (204, 404, 409) and r.status_code < 500, (d.text, r.status_code, r.text)
            outcomes.add((d.status_code, r.status_code))
            if d.status_code == 204:  # deleted: nothing this race sent may name a job that is gone
                assert sent == [], (sent, r.status_code, r.text)
            if d.status_code == 409:  # the rival started or resumed it first: stop that job and try again
                for j in api.get("/api/jobs?archived=all").json():
                    if j["status"] in ("queued", "running"):
                        api.post(f"/api/jobs/{j['id']}/cancel")
    assert (204, 404) in outcomes or (204, 200) in outcomes
