"""The mistakes API and image folders through the API: GET /api/datasets lists the folders it finds (a broken one
with what is wrong), a config that names a folder is checked (422 naming `dataset`, saying what is wrong where),
GET /api/jobs/{id}/mistakes pages and filters a job's kept predictions, and its thumbnails are read from the
dataset through its loader, by row: never a path, never a 500."""
import io

from PIL import Image

from core import folders, mistakes
from tests.imagefolders import write_folder

from .conftest import TINY


def _data(api_home):
    return api_home / "data"


def _job(api, dataset="folder:shapes"):
    r = api.post("/api/experiments", json={"name": "mine", "start": True,
                                           "config": {**TINY, "dataset": dataset, "train_per_class": None}})
    assert r.status_code == 201, r.text
    return r.json()["jobs"][0]["id"]


def _predict(home, job_id, dataset="folder:shapes", wrong_first=()):
    """What the worker keeps, for a job: every third image wrong at the best epoch, `wrong_first` at epoch 1."""
    f = folders.scan(dataset, home / "data")
    ids = [rel for rel, _ in f.val]
    labels = [label for _, label in f.val]
    k = len(f.classes)
    pred = [(y + 1) % k if i % 3 == 0 else y for i, y in enumerate(labels)]
    conf = [0.5 + i / (2 * len(ids)) for i in range(len(ids))]
    out = home / "runs" / f"job-{job_id}"
    mistakes.write(out, "latest", 1, dataset, f.classes, ids, labels,
                   [(y + 1) % k if i in wrong_first else y for i, y in enumerate(labels)], conf)
    mistakes.keep_as(out, "latest", "first")
    mistakes.write(out, "latest", 3, dataset, f.classes, ids, labels, pred, conf)
    mistakes.keep_as(out, "latest", "best")
    return f, labels, pred


def test_folders_are_listed_with_their_sizes_and_broken_ones_say_why(api, tmp_path):
    home = tmp_path / "home"
    write_folder(home / "data", "shapes", train=4, val=2)
    (home / "data" / "folders" / "empty" / "train").mkdir(parents=True)
    (home / "data" / "folders" / "empty" / "val").mkdir()
    served = {d["id"]: d for d in api.get("/api/datasets").json()}
    shapes = served["folder:shapes"]
    assert shapes["classes"] == ["blue", "green", "red"] and not shapes["in_paper"]
    # Listed by name: the truncated PNG and the text file named .jpg count until a run reads (and skips) them.
    assert (shapes["train_size"], shapes["val_size"]) == (13, 7)
    assert "train/ holds no class folders" in served["folder:empty"]["error"]


def test_a_config_naming_a_folder_is_checked_with_a_422_that_says_what_is_wrong(api, tmp_path):
    home = tmp_path / "home"
    root = write_folder(home / "data", "shapes", train=3, val=2)
    for dataset, says in (("folder:nothere", "does not exist"), ("folder:../../etc", "dataset"),
                          ("folder:<img src=x>", "dataset"), ("cifar11", "dataset")):
        r = api.post("/api/experiments", json={"name": "x", "config": {**TINY, "dataset": dataset}})
        assert r.status_code == 422, r.text
        d = r.json()["detail"]
        assert d[0]["loc"][-1] == "dataset" and says in str(d), d
    (root / "val" / "green").rename(root / "val-green-away")
    r = api.post("/api/experiments", json={"name": "x", "config": {**TINY, "dataset": "folder:shapes"}})
    assert r.status_code == 422 and "val/ lacks the class folder(s) 'green'" in r.text
    (root / "val-green-away").rename(root / "val" / "green")
    assert _job(api) >= 1
    card = api.get("/api/models/deit_tiny_patch16_224?dataset=folder:shapes").json()
    assert card["num_classes"] == 3 and card["paper_val_acc"] is None
    plan = api.post("/api/plan", json={"configs": [{**TINY, "dataset": "folder:shapes", "train_per_class": None}]})
    assert plan.status_code == 200, plan.text
    item = plan.json()["items"][0]  # the plan counts the folder's images (the truncated PNG until a run skips it)
    assert item["estimate"]["train_images"] == 10 and item["estimate"]["val_images"] == 7


def test_mistakes_are_paged_filtered_and_carry_their_thumbnails(api, tmp_path):
    home = tmp_path / "home"
    write_folder(home / "data", "shapes", train=3, val=9, broken=False)
    jid = _job(api)
    assert api.get(f"/api/jobs/{jid}/mistakes").status_code == 404  # nothing kept yet: said, not a 500
    f, labels, pred = _predict(home, jid, wrong_first={3, 4})
    r = api.get(f"/api/jobs/{jid}/mistakes", params={"per_page": 4})
    assert r.status_code == 200, r.text
    page = r.json()
    wrong = [i for i, (y, q) in enumerate(zip(labels, pred)) if y != q]
    assert page["total"] == page["mistakes_all"] == len(wrong) == 9 and page["pages"] == 3 and page["epoch"] == 3
    confs = [it["confidence"] for it in page["items"]]
    assert confs == sorted(confs, reverse=True)  # most confident first
    rows = {it["row"] for p in (1, 2, 3) for it in api.get(f"/api/jobs/{jid}/mistakes",
                                                          params={"per_page": 4, "page": p}).json()["items"]}
    assert rows == set(wrong)
    item = page["items"][0]
    assert item["thumbnail"] == f"/api/jobs/{jid}/images/{item['row']}?epoch=best"
    assert item["true"] == f.classes[labels[item["row"]]] and item["pred"] == f.classes[pred[item["row"]]]
    first = {it["row"]: it["right_at_epoch_1"]
             for it in api.get(f"/api/jobs/{jid}/mistakes", params={"per_page": 50}).json()["items"]}
    assert first[3] is False and first[0] is True  # row 3 was wrong at epoch 1 too; row 0 was right then
    # Filters by class name or index: one confusion-matrix cell.
    cell = api.get(f"/api/jobs/{jid}/mistakes", params={"true": "blue", "pred": 1}).json()
    assert cell["items"] and all(it["true"] == "blue" and it["pred"] == "green" for it in cell["items"])
    assert cell["total"] == sum(1 for y, q in zip(labels, pred) if y == 0 and q == 1) > 0
    assert api.get(f"/api/jobs/{jid}/mistakes", params={"true": "red", "pred": "blue"}).json()["total"] == 0
    # The thumbnail: a PNG of the listed image, read through the folder's loader.
    img = api.get(item["thumbnail"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(img.content)).size == (96, 96)


def test_bad_mistakes_requests_get_clear_answers(api, tmp_path):
    home = tmp_path / "home"
    write_folder(home / "data", "shapes", train=3, val=3, broken=False)
    jid = _job(api)
    _predict(home, jid)
    for params, field in (({"true": "purple"}, "true"), ({"pred": 7}, "pred"), ({"epoch": "first"}, "epoch"),
                          ({"page": 0}, "page"), ({"per_page": 10_000}, "per_page")):
        r = api.get(f"/api/jobs/{jid}/mistakes", params=params)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == field, (params, r.text)
    assert api.get(f"/api/jobs/{jid}/mistakes", params={"page": 99}).json()["items"] == []
    assert api.get("/api/jobs/999/mistakes").status_code == 404
    for path in (f"/api/jobs/{jid}/images/99", f"/api/jobs/{jid}/images/-1", f"/api/jobs/{jid}/images/..%2F..%2Fx",
                 f"/api/jobs/{jid}/images/../../etc/passwd", "/api/jobs/999/images/0"):
        r = api.get(path)
        assert r.status_code in (404, 422), (path, r.status_code, r.text)
    # The folder gone since the run: the thumbnail says so (404 with where), the page still lists the mistakes.
    import shutil
    shutil.rmtree(home / "data" / "folders" / "shapes")
    r = api.get(f"/api/jobs/{jid}/images/0")
    assert r.status_code == 404 and "does not exist" in r.json()["detail"]
    assert api.get(f"/api/jobs/{jid}/mistakes").status_code == 200


def test_cifar_thumbnails_come_from_the_test_set_the_job_used(api, tmp_path):
    from worker.engine import data
    home = tmp_path / "home"
    train, val = data.generated(20, 12, seed=3)
    data.write_cifar_batches(home / "data", train, val)
    jid = _job(api, "cifar10")
    out = home / "runs" / f"job-{jid}"
    ids = list(range(12))
    mistakes.write(out, "latest", 1, "cifar10", [f"c{i}" for i in range(10)], ids, [int(x) for x in val.labels],
                   [(int(x) + 1) % 10 for x in val.labels], [0.9] * 12)
    mistakes.keep_as(out, "latest", "best")
    r = api.get(f"/api/jobs/{jid}/images/5")
    assert r.status_code == 200
    got = Image.open(io.BytesIO(r.content)).convert("RGB")
    assert got.getpixel((0, 0)) == tuple(int(v) for v in val.images[5][:, 0, 0])  # the very image, upscaled


def test_seeds_a_depth_sweep_the_compare_view_and_the_report_take_a_folder(api, tmp_path):
    from .test_reproduction_report import _finish
    home = tmp_path / "home"
    write_folder(home / "data", "shapes", train=3, val=2, broken=False)
    cfg = {**TINY, "dataset": "folder:shapes", "train_per_class": None}
    made = [api.post("/api/experiments", json={"name": f"depth {k}", "group": "mine", "config":
                                               {**cfg, "trainable_blocks": k}}).json() for k in (0, 1)]
    rep = api.post(f"/api/experiments/{made[1]['id']}/repeat", json={"seeds": 3})
    assert rep.status_code == 201, rep.text
    jobs = [m["jobs"][0]["id"] for m in made + rep.json()["created"]]
    for jid, acc in zip(jobs, (0.6, 0.8, 0.82, 0.84)):
        _finish(jid, [acc - 0.1, acc], {"device": "cpu", "precision": "fp32", "trainable_params": 1000})
    stats = api.get("/api/compare/stats", params={"jobs": ",".join(map(str, jobs))})
    assert stats.status_code == 200, stats.text
    depth = api.get("/api/depth", params={"group": "mine"}).json()
    assert {p["depth"] for p in depth["points"]} == {0, 1} and all(p["dataset"] == "folder:shapes"
                                                                  for p in depth["points"])
    md = api.get("/api/report.md", params={"group": "mine"})
    assert md.status_code == 200 and "folder:shapes" in md.text
    assert api.get("/api/report.html", params={"group": "mine"}).status_code == 200
    csv_ = api.get("/api/compare.csv", params={"jobs": ",".join(map(str, jobs))})
    assert csv_.status_code == 200 and "folder:shapes" in csv_.text


def test_train_per_class_beyond_a_folders_smallest_class_is_a_422_naming_the_field(api, tmp_path):
    """train_per_class takes that many images of every class: a folder's smallest class bounds it, checked when the
    config arrives (before, the run failed at its data step)."""
    root = write_folder(tmp_path / "home" / "data", "shapes", train=4, val=2, broken=False)
    for f in sorted((root / "train" / "green").iterdir())[:2]:
        f.unlink()  # green keeps 2 training images, the others 4
    config = {**TINY, "dataset": "folder:shapes", "train_per_class": 3}
    for path, body in (("/api/experiments", {"name": "x", "config": config}), ("/api/plan", {"configs": [config]})):
        r = api.post(path, json=body)
        assert r.status_code == 422, r.text
        d = r.json()["detail"]
        assert d[0]["loc"][-1] == "train_per_class", d
        assert "folder:shapes's smallest class, 'green', has 2 training images" in d[0]["msg"]
        assert "choose 2 or fewer, or empty for all the images" in d[0]["msg"]
    assert api.post("/api/experiments", json={"name": "x", "config": {**config, "train_per_class": 2}}).status_code == 201
    assert api.post("/api/experiments", json={"name": "x", "config": {**config, "train_per_class": None}}).status_code == 201
