"""The two CSVs a spreadsheet opens (docs/csv.md): GET /api/epochs.csv, one row per job and epoch, and
GET /api/compare.csv, one row per job; both write booleans as true/false, accuracies as fractions, times with their
unit in the column's name, and name what their statistics are statistics of."""
import csv
import io

import pytest

from backend.app.csv_export import FALSE, TRUE
from core.config import web_options

from .conftest import TINY
from .test_compare_stats import DENSE, finish, repeats


def _rows(api, url) -> list[dict]:
    r = api.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(r.text)))


def test_the_epoch_table_has_one_row_per_job_and_epoch(api):
    a, b = repeats(api, DENSE, [[0.90, 0.95, 0.96], [0.91, 0.94]])
    hostile = api.post("/api/experiments", json={"name": "=HYPERLINK(\"x\")", "config": TINY}).json()["jobs"][0]["id"]
    finish(hostile, [0.5])
    rows = _rows(api, f"/api/epochs.csv?jobs={b},{a},{hostile}")
    assert list(rows[0]) == ["job_id", "experiment", "model", "dry_run", "status", "epoch", "train_loss", "train_acc",
                             "val_loss", "val_acc", "lr", "epoch_time_s"]
    assert [(int(r["job_id"]), int(r["epoch"])) for r in rows] == [(b, 1), (b, 2), (a, 1), (a, 2), (a, 3), (hostile, 1)]
    first = rows[2]
    assert first["model"] == "densenet201" and first["status"] == "succeeded" and first["dry_run"] == FALSE
    assert (float(first["val_acc"]), float(first["val_loss"]), float(first["train_loss"]),
            float(first["train_acc"])) == (0.90, 1.1, 1.0, 0.4)  # fractions, as the protocol stores them
    assert (float(first["lr"]), float(first["epoch_time_s"])) == (1e-4, 2.0)
    assert rows[-1]["experiment"] == "'=HYPERLINK(\"x\")"  # a formula never runs in the spreadsheet
    r = api.get(f"/api/epochs.csv?jobs={a}")
    assert 'filename="blocklab-epochs.csv"' in r.headers["content-disposition"]
    assert api.get("/api/epochs.csv?jobs=1,x").status_code == 422
    assert api.get("/api/epochs.csv?jobs=999").status_code == 404
    assert api.get("/api/epochs.csv").status_code == 422


def test_a_run_without_an_epoch_has_no_row_and_dry_runs_say_so(api):
    dry = api.post("/api/experiments", json={"name": "dry", "config": TINY, "dry_run": True}).json()["jobs"][0]["id"]
    queued = api.post("/api/experiments", json={"name": "waiting", "config": TINY}).json()["jobs"][0]["id"]
    finish(dry, [0.2, 0.3])
    rows = _rows(api, f"/api/epochs.csv?jobs={dry},{queued}")
    assert [int(r["job_id"]) for r in rows] == [dry, dry] and {r["dry_run"] for r in rows} == {TRUE}


def test_booleans_are_written_one_way_in_both_csvs(api):
    bools = [o.name for o in web_options() if o.type is bool]
    assert bools  # options a browser sets that are booleans: written as the dry-run flag is
    jid = api.post("/api/experiments", json={"name": "b", "config": {**TINY, bools[0]: False}}).json()["jobs"][0]["id"]
    finish(jid, [0.4])
    summary = _rows(api, f"/api/compare.csv?jobs={jid}")[0]
    epochs = _rows(api, f"/api/epochs.csv?jobs={jid}")[0]
    assert summary[bools[0]] == FALSE and summary["dry_run"] == FALSE and epochs["dry_run"] == FALSE
    assert {summary[b] for b in bools} <= {TRUE, FALSE}
    metrics = _rows(api, f"/api/jobs/{jid}/metrics.csv")[0]
    assert metrics["dry_run"] == FALSE


@pytest.mark.parametrize("url", ["/api/compare.csv", "/api/epochs.csv"])
def test_accuracies_are_fractions_as_docs_csv_md_says(api, url):
    """The documentation names each column of both files and the one unit of accuracy the files use."""
    from pathlib import Path
    ids = repeats(api, DENSE, [[0.95], [0.94], [0.945]])  # an interval inside [0, 1]
    rows = _rows(api, f"{url}?jobs={','.join(map(str, ids))}")
    doc = (Path(__file__).resolve().parents[2] / "docs" / "csv.md").read_text()
    assert "fraction" in doc
    for column in rows[0]:
        if column in {o.name for o in web_options()}:
            continue  # the options: documented where they are declared (GET /api/options)
        assert f"`{column}`" in doc, column
    for row in rows:
        for k, v in row.items():
            if "acc" in k and v and k not in ("paper_val_acc_vs_ci95", "best_val_acc_n_seeds"):
                assert 0 <= float(v) <= 1, (k, v)


def test_every_csv_names_a_metric_one_way_and_a_time_with_its_unit(api):
    """A job's metrics.csv and the per-epoch table name each epoch metric alike (core.protocol EPOCH_ROW's
    csv_name): an epoch's time is `epoch_time_s` in both, never `seconds` in one. Every time column ends in `_s`,
    and every column of the three files is in docs/csv.md."""
    from pathlib import Path

    from core.protocol import EPOCH_ROW
    ids = repeats(api, DENSE, [[0.9, 0.95], [0.91, 0.94]])
    epochs = list(_rows(api, f"/api/epochs.csv?jobs={ids[0]}")[0])
    metrics = list(_rows(api, f"/api/jobs/{ids[0]}/metrics.csv")[0])
    summary = list(_rows(api, f"/api/compare.csv?jobs={ids[0]}")[0])
    shared = [c for c in epochs if c not in ("job_id", "experiment", "model", "dry_run", "status")]
    assert set(shared) <= set(metrics), sorted(set(shared) - set(metrics))
    assert "epoch_time_s" in metrics and "seconds" not in metrics and "train_seconds" not in metrics
    times = [m.csv_name for m in EPOCH_ROW if "wall time" in m.help]
    assert times and all(t.endswith("_s") for t in times), times
    doc = (Path(__file__).resolve().parents[2] / "docs" / "csv.md").read_text()
    options = {o.name for o in web_options()}
    for column in {*epochs, *metrics, *summary} - options:
        assert f"`{column}`" in doc, column


def test_a_job_that_never_built_its_model_has_no_trainable_count(api):
    """compare.csv's trainable_params is what the run counted once it built its model (its info): a job that
    failed before that leaves the cell empty, never the catalogue's count passed off as the run's."""
    from backend.app.ingest import handle_event
    failed, built = (api.post("/api/experiments", json={"name": n, "config": DENSE}).json()["jobs"][0]["id"]
                     for n in ("failed", "built"))
    handle_event({"type": "started", "job_id": failed, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    handle_event({"type": "finished", "job_id": failed, "attempt": 1, "ts": 0, "status": "failed",
                  "error": "weights file missing"})
    handle_event({"type": "started", "job_id": built, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    handle_event({"type": "info", "job_id": built, "attempt": 1, "ts": 0, "info": {"trainable_params": 4321}})
    finish(built, [0.5])
    rows = {int(r["job_id"]): r for r in _rows(api, f"/api/compare.csv?jobs={failed},{built}")}
    assert rows[failed]["status"] == "failed" and rows[failed]["trainable_params"] == ""
    assert rows[built]["trainable_params"] == "4321"
    assert rows[failed]["paper_trainable_params"]  # the paper's count stays, in its own labelled column
