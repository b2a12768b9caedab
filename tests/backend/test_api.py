import csv
import io

from sqlalchemy import func, select

from backend.app.ingest import handle_event
from core import catalogue

from .conftest import TINY


def _create(api, name="exp", **cfg):
    r = api.post("/api/experiments", json={"name": name, "config": {**TINY, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()


def test_models_and_paper(api):
    models = api.get("/api/models").json()
    assert len(models) == len(catalogue.CATALOGUE)
    deit = next(m for m in models if m["id"] == "deit_base_distilled_patch16_224")
    assert deit["in_paper"] and deit["paper_val_acc"] == 0.9645 and deit["paper_trainable_params"] == 7_488_276
    assert deit["family"] == "transformer" and deit["unfreeze_from"] == "blocks.11"
    paper = api.get("/api/paper").json()
    assert len(paper["table1"]) == 10 and set(paper["curves"]) == {"DenseNet201", "CaiT-S24", "Swin-B 224"}
    assert all(0 < r["val_acc"] < 1 for r in paper["table1"])


def test_experiment_defaults_to_the_paper_preset(api):
    r = api.post("/api/experiments", json={"name": "paper", "start": False})
    cfg = r.json()["config"]
    assert (cfg["model"], cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["lr_factor"], cfg["lr_patience"],
            cfg["min_lr"], cfg["hflip"]) == ("deit_base_distilled_patch16_224", 20, 512, 1e-4, 0.6, 2, 1e-7, True)


def test_swin_gets_the_papers_batch_unless_one_is_given(api):
    swin = "swin_base_patch4_window7_224"
    r = api.post("/api/experiments", json={"name": "s", "start": False, "config": {"model": swin}})
    assert r.json()["config"]["batch_size"] == 256
    r = api.post("/api/experiments", json={"name": "s", "start": False, "config": {"model": swin, "batch_size": 64}})
    assert r.json()["config"]["batch_size"] == 64


def test_bad_fields_get_422_naming_the_field(api):
    cases = [({"model": "resnet9000"}, "model"), ({"epochs": 0}, "epochs"), ({"lr": -1}, "lr"),
             ({"weights": "/etc/passwd"}, "weights"), ({"data_dir": "/tmp"}, "data_dir")]
    for cfg, field in cases:
        r = api.post("/api/experiments", json={"name": "x", "config": cfg})
        assert r.status_code == 422, (cfg, r.text)
        assert any(d["loc"][-1] == field for d in r.json()["detail"]), r.json()
    r = api.post("/api/experiments", json={"name": ""})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "name"
    assert api.get("/api/experiments").json() == []  # nothing stored


def test_submission_queues_a_job(api):
    e = _create(api)
    assert len(e["jobs"]) == 1 and e["jobs"][0]["status"] == "queued"
    job = api.get(f"/api/jobs/{e['jobs'][0]['id']}").json()
    assert job["model"] == "deit_tiny_patch16_224" and job["epochs"] == 2
    assert [j["id"] for j in api.get("/api/jobs?status=queued").json()] == [job["id"]]
    assert api.get("/api/jobs?status=running").json() == []
    assert api.get("/api/jobs?status=bogus").status_code == 422
    assert api.get("/api/jobs/999").status_code == 404


def test_cancel_queued_then_resume(api):
    jid = _create(api)["jobs"][0]["id"]
    assert api.post(f"/api/jobs/{jid}/cancel").json()["status"] == "cancelled"
    assert api.post(f"/api/jobs/{jid}/cancel").status_code == 409
    j = api.post(f"/api/jobs/{jid}/resume").json()
    assert j["status"] == "queued" and j["attempt"] == 2
    assert api.post(f"/api/jobs/{jid}/resume").status_code == 409


def _epoch(job_id, epoch, attempt=1, acc=0.5):
    handle_event({"type": "epoch", "job_id": job_id, "attempt": attempt, "ts": 0, "row": {
        "epoch": epoch, "train_loss": 1.0, "train_acc": 0.4, "val_loss": 1.1, "val_acc": acc, "lr": 1e-4,
        "seconds": 2.0, "images_per_s": 100.0, "per_class_acc": [acc] * 10, "confusion": [[0] * 10] * 10}})


def test_epochs_are_stored_once_and_stale_attempts_ignored(api):
    jid = _create(api)["jobs"][0]["id"]
    handle_event({"type": "started", "job_id": jid, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    _epoch(jid, 1)
    _epoch(jid, 1)  # replayed after a redelivery
    _epoch(jid, 2, acc=0.7)
    assert [m["epoch"] for m in api.get(f"/api/jobs/{jid}/metrics").json()] == [1, 2]
    handle_event({"type": "finished", "job_id": jid, "attempt": 0, "ts": 0, "status": "failed", "error": "old"})
    j = api.get(f"/api/jobs/{jid}").json()
    assert j["status"] == "running" and j["best_val_acc"] == 0.7 and j["best_epoch"] == 2
    handle_event({"type": "finished", "job_id": jid, "attempt": 1, "ts": 0, "status": "succeeded"})
    assert api.get(f"/api/jobs/{jid}").json()["status"] == "succeeded"
    body = api.get(f"/api/jobs/{jid}/events").text
    assert body.count("event: epoch") == 2 and "event: end" in body
    replay = api.get(f"/api/jobs/{jid}/events", headers={"Last-Event-ID": "3"}).text
    assert "id: 3\n" not in replay and "id: 4\n" in replay


def test_lost_worker_is_requeued_then_failed(api, monkeypatch):
    from backend.app import ingest
    from backend.app.models import Job
    from core.settings import get_settings
    jid = _create(api)["jobs"][0]["id"]
    handle_event({"type": "started", "job_id": jid, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    s = get_settings().model_copy(update={"heartbeat_timeout_s": -1.0, "max_attempts": 2})
    far_past = ingest.utcnow().replace(year=2000)
    assert ingest.check_heartbeats(s, far_past) == [jid]
    j = api.get(f"/api/jobs/{jid}").json()
    assert j["status"] == "queued" and j["attempt"] == 2
    handle_event({"type": "started", "job_id": jid, "attempt": 2, "ts": 0, "worker": "w2", "device": "cpu"})
    ingest.check_heartbeats(s, far_past)
    j = api.get(f"/api/jobs/{jid}").json()
    assert j["status"] == "failed" and "worker lost 2 times" in j["error"]
    from backend.app.db import session_scope
    with session_scope() as db:
        assert db.scalar(select(func.count(Job.id))) == 1


def test_compare_csv_rows_and_formula_neutralized(api):
    a = _create(api, name="=cmd|' /C calc'!A0")["jobs"][0]["id"]
    b = _create(api, name="plain", model="deit_base_distilled_patch16_224")["jobs"][0]["id"]
    _epoch(a, 1, acc=0.3)
    _epoch(b, 1, acc=0.9)
    r = api.get(f"/api/compare.csv?jobs={a},{b}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["job_id"]) for x in rows] == [a, b]
    assert rows[0]["experiment"] == "'=cmd|' /C calc'!A0"
    assert rows[1]["paper_model"] == "DeiT-B distilled" and float(rows[1]["paper_val_acc"]) == 0.9645
    assert float(rows[1]["diff_vs_paper"]) == round(0.9 - 0.9645, 6) and rows[1]["best_epoch"] == "1"
    assert {"lr", "batch_size", "epochs", "trainable_params", "paper_trainable_params", "runtime_s",
            "images_per_s", "final_val_loss"} <= set(rows[0])
    assert api.get("/api/compare.csv?jobs=1,x").status_code == 422
    assert api.get("/api/compare.csv?jobs=999").status_code == 404
    m = list(csv.DictReader(io.StringIO(api.get(f"/api/jobs/{a}/metrics.csv").text)))
    assert len(m) == 1 and m[0]["epoch"] == "1"


def test_reproduce_table1_queues_ten_models_as_one_group(api):
    r = api.post("/api/reproduce", json={"group": "t1", "overrides": {"epochs": 1}})
    assert r.status_code == 201
    exps = r.json()
    assert len(exps) == 10 and {e["group"] for e in exps} == {"t1"}
    swin = next(e for e in exps if e["config"]["model"].startswith("swin"))
    assert swin["config"]["batch_size"] == 256 and swin["config"]["epochs"] == 1
    assert len(api.get("/api/experiments?group=t1").json()) == 10
    bad = api.post("/api/reproduce", json={"overrides": {"epochs": -3}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "epochs"


def test_token_guards_every_change(api, monkeypatch):
    from core.settings import get_settings
    monkeypatch.setattr(get_settings(), "token", "s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    r = api.post("/api/experiments", json={"name": "x", "config": TINY})
    assert r.status_code == 401
    assert api.get("/api/experiments", headers=auth).json() == []  # nothing changed
    ok = api.post("/api/experiments", json={"name": "x", "config": TINY}, headers=auth)
    assert ok.status_code == 201
    jid = ok.json()["jobs"][0]["id"]
    assert api.post(f"/api/jobs/{jid}/cancel").status_code == 401
    assert api.get(f"/api/jobs/{jid}", headers=auth).json()["status"] == "queued"
    assert api.get("/api/models").status_code == 401  # reading needs it too (test_security.py)


def test_oversized_body_is_refused(api):
    r = api.post("/api/experiments", content=b"{" + b" " * 100_000 + b"}",
                 headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_frontend_and_plotly_are_served_locally(api):
    assert "BlockLab" in api.get("/").text
    js = api.get("/vendor/plotly.min.js")
    assert js.status_code == 200 and len(js.content) > 1_000_000


def test_the_page_names_a_favicon_the_backend_serves(api):
    import re
    href = re.search(r'<link rel="icon" href="([^"]+)"', api.get("/").text).group(1)
    r = api.get(href)
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml") and b"<svg" in r.content
