"""Single-block transfer on a folder of one's own images, for real with a tiny model: the folder's images (mixed
sizes and modes, a few broken) train and validate, the broken ones are counted, the run keeps the validation
predictions the gallery reads (first, best, latest), the frozen-feature cache is reused by a later run, other
depths and seeds run, and the command line and the notebook's run() write the gallery as one HTML file."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core import mistakes
from core.config import TrainConfig
from tests.conftest import ROOT
from tests.imagefolders import write_folder
from worker.engine.train import Callbacks, Paths, run

TINY = dict(model="deit_tiny_patch16_224", weights="none", batch_size=16, image_size=32, precision="fp32",
            dataset="folder:shapes")
EVIL = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("folder-data")
    write_folder(d, "shapes", train=12, val=6, classes=("blue", "green", EVIL))
    return d


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_folder_trains_and_keeps_the_predictions_the_gallery_shows(data, tmp_path):
    infos = []
    out = tmp_path / "run"
    s = run(TrainConfig(**TINY, epochs=3), Paths(data, out, cache_dir=tmp_path / "cache"),
            Callbacks(on_info=infos.append))
    assert s["status"] == "succeeded" and s["paper_val_acc"] is None
    info = infos[0]
    assert (info["train_images"], info["val_images"]) == (36, 18)  # the truncated PNG and the text file skipped
    assert info["skipped_files"]["count"] == 3
    assert {f["path"] for f in info["skipped_files"]["files"]} == {
        "train/blue/broken.png", "val/green/notes.jpg", "train/README.txt"}
    assert s["best_val_acc"] > 0.5  # three colours: far above chance (1/3) after three epochs
    kept = {w: mistakes.read(out, w) for w in mistakes.EPOCHS}
    assert kept["first"]["epoch"] == 1 and kept["latest"]["epoch"] == 3 and kept["best"]["epoch"] == s["best_epoch"]
    assert kept["best"]["classes"] == [EVIL, "blue", "green"] and len(kept["best"]["ids"]) == 18
    assert all(i.startswith("val/") for i in kept["best"]["ids"])
    # The gallery's count is the best epoch's confusion matrix off its diagonal, cell by cell.
    confusion = next(r for r in _rows(out) if r["epoch"] == s["best_epoch"])["confusion"]
    page = mistakes.mistakes(out, "best", per_page=100)
    assert page["total"] == sum(c for i, r in enumerate(confusion) for j, c in enumerate(r) if i != j)
    for i, r in enumerate(confusion):
        for j, c in enumerate(r):
            if i != j:
                assert mistakes.mistakes(out, "best", true=i, pred=j)["total"] == c
    assert all(0 < it["confidence"] <= 1 and it["right_at_epoch_1"] in (True, False) for it in page["items"])

    # A later run of the same frozen part finds its cache; other depths and another seed run on the folder too.
    again = []
    run(TrainConfig(**TINY, epochs=1), Paths(data, tmp_path / "again", cache_dir=tmp_path / "cache"),
        Callbacks(on_info=again.append))
    assert again[0]["feature_cache"]["reused"] is True
    for depth, seed in ((0, 0), (2, 1)):
        s2 = run(TrainConfig(**TINY, epochs=1, trainable_blocks=depth, seed=seed, train_per_class=5, val_limit=9),
                 Paths(data, tmp_path / f"d{depth}"))
        assert s2["status"] == "succeeded" and len(mistakes.read(tmp_path / f"d{depth}", "best")["ids"]) == 9


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_command_line_takes_a_folder_and_writes_the_gallery_as_one_html_file(data, tmp_path):
    page = tmp_path / "gallery.html"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "worker.finetune", "--model", "deit_tiny_patch16_224", "--weights",
                        "none", "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--device", "cpu",
                        "--dataset", "folder:shapes", "--data-dir", str(data), "--out", str(tmp_path / "out"),
                        "--gallery", str(page)], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    n = mistakes.mistakes(tmp_path / "out", "best")["total"]
    assert text.count("<figure") == n and text.count("data:image/png;base64,") == n
    assert "http://" not in text and "https://" not in text and "<script src" not in text  # self-contained
    assert EVIL not in text and "&lt;img src=x onerror=alert(1)&gt;" in text  # a class name is text, never HTML
    bad = subprocess.run([sys.executable, "-m", "worker.finetune", "--dataset", "folder:../../etc", "--data-dir",
                          str(data), "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120,
                         cwd=ROOT, env=env)
    assert bad.returncode == 2 and "folder:NAME" in bad.stderr and "Traceback" not in bad.stderr


def test_the_notebook_run_writes_the_gallery_too(data, tmp_path):
    from worker import notebook
    page = tmp_path / "nb.html"
    result = notebook.run("deit_tiny_patch16_224", out=tmp_path / "nb", data_dir=data, show=False, gallery=page,
                          weights="none", image_size=32, batch_size=16, epochs=1, dataset="folder:shapes")
    assert result.status == "succeeded" and page.read_text().startswith("<!doctype html>")
    with pytest.raises(notebook.RunError, match="val/ lacks"):
        (data / "folders" / "broken" / "train" / "a").mkdir(parents=True)
        (data / "folders" / "broken" / "train" / "b").mkdir(parents=True)
        (data / "folders" / "broken" / "val" / "a").mkdir(parents=True)
        notebook.run("deit_tiny_patch16_224", out=tmp_path / "nb2", data_dir=data, show=False, weights="none",
                     image_size=32, epochs=1, dataset="folder:broken")
