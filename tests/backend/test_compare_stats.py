"""GET /api/compare/stats and the comparison CSV's statistics columns: runs that differ only by seed form one
repeat group with n, mean, sd and the 95% Student's t interval of the best validation accuracy, the paper's number
inside or outside it ("no paper number" for CIFAR-100), and a per-epoch mean curve with min and max."""
import csv
import io

import pytest

from backend.app.ingest import handle_event
from core import stats

from .conftest import TINY

DENSE = {**TINY, "model": "densenet201"}  # a paper model: Table 1 has 94.757%


def finish(job_id: int, accs: list[float]) -> None:
    """A job through the real ingestion path: started, one epoch per accuracy, succeeded."""
    handle_event({"type": "started", "job_id": job_id, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    for epoch, acc in enumerate(accs, 1):
        handle_event({"type": "epoch", "job_id": job_id, "attempt": 1, "ts": 0, "row": {
            "epoch": epoch, "train_loss": 1.0, "train_acc": 0.4, "val_loss": 1.1, "val_acc": acc, "lr": 1e-4,
            "seconds": 2.0, "images_per_s": 100.0, "per_class_acc": [acc] * 10, "confusion": [[0] * 10] * 10}})
    handle_event({"type": "finished", "job_id": job_id, "attempt": 1, "ts": 0, "status": "succeeded"})


def repeats(api, config: dict, curves: list[list[float]], name="dense") -> list[int]:
    """An experiment repeated under len(curves) seeds, each job finished with its curve: the job ids."""
    e = api.post("/api/experiments", json={"name": name, "config": config}).json()
    made = api.post(f"/api/experiments/{e['id']}/repeat", json={"seeds": len(curves)}).json()["created"]
    ids = [e["jobs"][0]["id"], *(m["jobs"][0]["id"] for m in made)]
    for jid, curve in zip(ids, curves):
        finish(jid, curve)
    return ids


def _group(api, ids):
    r = api.get("/api/compare/stats", params={"jobs": ",".join(map(str, ids))})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_repeat_group_has_its_interval_and_the_paper_inside(api):
    ids = repeats(api, DENSE, [[0.90, 0.95], [0.93, 0.94], [0.96, 0.92]])  # bests 0.95, 0.94, 0.96
    alone = api.post("/api/experiments", json={"name": "other lr", "config": {**DENSE, "lr": 1e-3}}).json()
    finish(alone["jobs"][0]["id"], [0.5])
    body = _group(api, [*ids, alone["jobs"][0]["id"]])
    assert body["band"].startswith("min–max")
    g, single = body["groups"]
    expect = stats.summary([0.95, 0.94, 0.96], 0.94757)
    assert g["jobs"] == ids and g["seeds"] == [0, 1, 2] and g["n"] == 3 and g["varies"] == ["seed"]
    assert g["name"] == "dense" and g["model"] == "densenet201" and g["paper_val_acc"] == pytest.approx(0.94757)
    for k in ("mean", "std", "ci_low", "ci_high"):
        assert g[k] == pytest.approx(expect[k])
    assert g["inside"] is True and g["verdict"] == "inside"
    assert [p["epoch"] for p in g["curve"]] == [1, 2]
    first = g["curve"][0]
    assert first["mean"] == pytest.approx(0.93) and first["min"] == 0.90 and first["max"] == 0.96 and first["n"] == 3
    assert single["n"] == 1 and single["ci_low"] is None and single["verdict"] == stats.ONE_RUN


def test_outside_and_no_paper_number(api):
    low = repeats(api, DENSE, [[0.800], [0.801], [0.802]])
    assert _group(api, low)["groups"][0]["verdict"] == "outside"
    c100 = repeats(api, {**DENSE, "dataset": "cifar100"}, [[0.70], [0.72]], name="c100")
    g = _group(api, c100)["groups"][0]
    assert g["paper_val_acc"] is None and g["inside"] is None and g["verdict"] == "no paper number"
    assert g["ci_low"] < g["mean"] < g["ci_high"]
    tiny = repeats(api, TINY, [[0.3], [0.4]], name="deit tiny")  # a model not in the paper
    assert _group(api, tiny)["groups"][0]["verdict"] == "no paper number"


def test_the_csv_carries_each_runs_group_statistics(api):
    ids = repeats(api, DENSE, [[0.95], [0.94], [0.96]])
    r = api.get("/api/compare.csv", params={"jobs": ",".join(map(str, ids))})
    assert r.status_code == 200
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0])[-6:] == ["best_val_acc_n_seeds", "best_val_acc_mean", "best_val_acc_std",
                                  "best_val_acc_ci95_low", "best_val_acc_ci95_high", "paper_val_acc_vs_ci95"]
    expect = stats.summary([0.95, 0.94, 0.96])
    for row in rows:
        assert row["best_val_acc_n_seeds"] == "3" and row["paper_val_acc_vs_ci95"] == "inside"
        assert float(row["best_val_acc_mean"]) == pytest.approx(expect["mean"], abs=1e-4)
        assert float(row["best_val_acc_ci95_low"]) == pytest.approx(expect["ci_low"], abs=1e-4)
    assert [row["seed"] for row in rows] == ["0", "1", "2"]


def test_unknown_or_malformed_ids(api):
    assert api.get("/api/compare/stats", params={"jobs": "999"}).status_code == 404
    assert api.get("/api/compare/stats", params={"jobs": "1,x"}).status_code == 422
    assert api.get("/api/compare/stats").status_code == 422


def test_a_seed_run_twice_is_one_draw_and_is_named(api):
    """Two jobs of one seed (a clone started twice) are one value: n counts seeds, the interval is not zero-wide,
    and the second is listed as left out."""
    ids = repeats(api, DENSE, [[0.95], [0.93]])
    again = api.post("/api/experiments", json={"name": "dense", "config": DENSE}).json()["jobs"][0]["id"]
    finish(again, [0.95])
    (g,) = _group(api, [*ids, again])["groups"]
    assert g["n"] == 2 and g["duplicates"] == [again] and g["std"] > 0


def test_a_repeat_group_has_a_mean_loss_curve_beside_its_accuracy_curve(api):
    """What the compare view's loss chart draws for a group of seeds: the mean validation loss per epoch."""
    from backend.app.db import session_scope
    from backend.app.models import EpochMetric
    ids = repeats(api, DENSE, [[0.90, 0.95], [0.92, 0.94]])
    with session_scope() as db:
        for jid, losses in zip(ids, [(0.5, 0.3), (0.7, 0.4)]):
            for m in db.query(EpochMetric).filter_by(job_id=jid):
                m.val_loss = losses[m.epoch - 1]
        db.commit()
    (g,) = _group(api, ids)["groups"]
    assert [(p["epoch"], p["n"], p["min"], p["max"]) for p in g["loss_curve"]] == [(1, 2, 0.5, 0.7), (2, 2, 0.3, 0.4)]
    assert [p["mean"] for p in g["loss_curve"]] == pytest.approx([0.6, 0.35])
