"""The API, the form's JSON, the CSV and the statuses derive from the one declaration of each option and
metric (core/config.py, core/protocol.py): nothing in the backend or the frontend lists them again."""
import csv
import io
import math

from sqlalchemy import event

from backend.app.ingest import handle_event
from core.config import OPTIONS, web_options
from core.protocol import EPOCH_ROW, JobStatus, epoch_row
from tests.conftest import ROOT

from .conftest import TINY


def _row(epoch, **over):
    values = {m.name: 0.5 for m in EPOCH_ROW} | {"epoch": epoch, "per_class_acc": [0.5] * 10,
                                                  "confusion": [[0] * 10] * 10}
    return epoch_row(**(values | over))


def _job(api, **cfg):
    r = api.post("/api/experiments", json={"name": "x", "config": {**TINY, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()["jobs"][0]["id"]


def test_the_form_is_served_from_the_options_declaration(api):
    served = api.get("/api/options").json()
    assert [o["name"] for o in served] == [o.name for o in web_options()]
    ls = next(o for o in served if o["name"] == "label_smoothing")
    assert (ls["type"], ls["default"], ls["min"], ls["max"]) == ("float", 0.0, 0, 0.5) and ls["help"]
    weights = next(o for o in served if o["name"] == "weights")
    assert weights["choices"] == ["hub", "none", "local"]  # a browser never names a file
    assert not any(o["name"] in ("device", "num_workers", "cache_dtype") for o in served)


def test_the_frontend_lists_no_option_and_no_status():
    js = "\n".join(f.read_text() for f in sorted((ROOT / "frontend").rglob("*.js")))
    assert "renderJob" in js  # every module is read
    for o in OPTIONS:
        if o.name != "model":
            assert f'"{o.name}"' not in js and f"{o.name}:" not in js, o.name
    for s in JobStatus:
        assert f'"{s.value}"' not in js, s.value


def test_every_bound_of_every_option_gives_a_422_naming_it(api):
    tried = 0
    for o in web_options():
        bad = []
        if o.ge is not None:
            bad.append(o.ge - 1)
        if o.gt is not None:
            bad.append(o.gt)
        if o.le is not None:
            bad.append(o.le + 1)
        if o.lt is not None:
            bad.append(o.lt)
        if o.choices or o.web_choices:
            bad.append("no-such-choice")
        for value in bad:
            r = api.post("/api/experiments", json={"name": "x", "config": {o.name: value}})
            assert r.status_code == 422, (o.name, value)
            assert any(d["loc"][-1] == o.name for d in r.json()["detail"]), (o.name, r.json())
            tried += 1
    assert tried >= 20
    assert api.get("/api/experiments").json() == []


def test_a_models_own_preset_values_come_from_its_catalogue_entry(api):
    models = {m["id"]: m for m in api.get("/api/models").json()}
    assert models["swin_base_patch4_window7_224"]["preset"] == {"batch_size": 256}
    assert models["deit_base_distilled_patch16_224"]["preset"] == {}


def test_label_smoothing_reaches_the_api_and_the_csv(api):
    jid = _job(api, label_smoothing=0.1)
    assert api.get(f"/api/experiments/{api.get(f'/api/jobs/{jid}').json()['experiment_id']}").json()[
        "config"]["label_smoothing"] == 0.1
    rows = list(csv.DictReader(io.StringIO(api.get(f"/api/compare.csv?jobs={jid}").text)))
    assert rows[0]["label_smoothing"] == "0.1"
    header = next(csv.reader(io.StringIO(api.get(f"/api/compare.csv?jobs={jid}").text)))
    assert header.count("model") == 1
    assert all(o.name in header for o in web_options())


def test_a_config_stored_before_an_option_existed_shows_its_default_in_the_csv(api):
    from backend.app.db import session_scope
    from backend.app.models import Experiment
    jid = _job(api)
    with session_scope() as db:
        e = db.get(Experiment, api.get(f"/api/jobs/{jid}").json()["experiment_id"])
        e.config = {k: v for k, v in e.config.items() if k != "label_smoothing"}
        db.commit()
    rows = list(csv.DictReader(io.StringIO(api.get(f"/api/compare.csv?jobs={jid}").text)))
    assert rows[0]["label_smoothing"] == "0.0"


def test_statuses_come_from_the_enum(api):
    s = api.get("/api/statuses").json()
    assert s["all"] == [x.value for x in JobStatus]
    assert set(s["cancellable"]) == {"queued", "running"} and set(s["resumable"]) == {"cancelled", "failed"}
    assert set(s["force_stoppable"]) == {"running", "cancelling"}
    schema = api.get("/openapi.json").json()["components"]["schemas"]
    assert schema["JobStatus"]["enum"] == s["all"]


def test_an_extra_metric_needs_no_column_and_a_nonfinite_one_is_kept(api):
    jid = _job(api)
    handle_event({"type": "started", "job_id": jid, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    handle_event({"type": "epoch", "job_id": jid, "attempt": 1, "ts": 0, "row": _row(1, train_seconds=1.25)})
    handle_event({"type": "epoch", "job_id": jid, "attempt": 1, "ts": 0,
                  "row": _row(2, train_loss=math.nan, val_loss=math.inf)})
    m1, m2 = api.get(f"/api/jobs/{jid}/metrics").json()
    assert m1["train_seconds"] == 1.25 and m1["nonfinite"] is None  # from the `extra` JSON column
    assert m2["train_loss"] is None and m2["nonfinite"] == {"train_loss": "NaN", "val_loss": "Infinity"}
    csv_rows = list(csv.DictReader(io.StringIO(api.get(f"/api/jobs/{jid}/metrics.csv").text)))
    assert [r["train_loss"] for r in csv_rows] == ["0.5", "NaN"]
    assert list(csv_rows[0]) == [*(m.csv_name for m in EPOCH_ROW if m.scalar), "precision", "dry_run"]


def test_listing_jobs_runs_a_constant_number_of_queries(api):
    from backend.app.db import get_engine

    def count_list_queries():
        n = {"q": 0}

        def count(*_a, **_k):
            n["q"] += 1
        event.listen(get_engine(), "before_cursor_execute", count)
        try:
            assert api.get("/api/jobs").status_code == 200
            assert api.get("/api/experiments").status_code == 200
        finally:
            event.remove(get_engine(), "before_cursor_execute", count)
        return n["q"]

    def add_jobs(k):
        for i in range(k):
            jid = _job(api)
            if i % 2:  # some running, with attempts, settings and progress; others queued (a queue position)
                handle_event({"type": "started", "job_id": jid, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
                handle_event({"type": "info", "job_id": jid, "attempt": 1, "ts": 0, "info": {"precision": "fp32"}})
                handle_event({"type": "progress", "job_id": jid, "attempt": 1, "ts": 0, "phase": "training",
                              "done": 1, "total": 4, "epoch": 4})
            for e in (1, 2, 3):
                handle_event({"type": "epoch", "job_id": jid, "attempt": 1, "ts": 0, "row": _row(e)})

    # The lab's own background work (the watchdog, the broker reconciliation) shares the engine and can add a query
    # to one count: the least of three counts is the listing's own number.
    add_jobs(2)
    few = min(count_list_queries() for _ in range(3))
    add_jobs(10)
    many = min(count_list_queries() for _ in range(3))
    assert len(api.get("/api/jobs").json()) == 12
    assert many == few, (few, many)
    assert api.get("/api/jobs").json()[0]["epochs_done"] == 3
