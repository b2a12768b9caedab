"""CIFAR-100 end to end: its official python layout (`train`, `test`, `meta`, fine labels) and archive, the
md5-checked download from a server on 127.0.0.1 serving a generated archive, and a tiny run whose head, per-class
accuracies and confusion matrix have 100 classes."""
import hashlib
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from core import catalogue
from core.config import TrainConfig
from tests.worker.hubserver import serve_bytes
from worker.engine import data
from worker.engine.train import Paths, run

NAMES = catalogue.DATASETS["cifar100"].classes


def _write(root: Path, n_train: int = 300, n_val: int = 200, **kw) -> Path:
    train, val = data.generated(n_train, n_val, seed=5, num_classes=100)
    return data.write_cifar100(root, train, val, **kw)


def _archive(tmp_path) -> bytes:
    """A real-layout CIFAR-100 archive: 3 training and 2 test images per class."""
    _write(tmp_path / "src")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / data.CIFAR100_DIR, arcname=data.CIFAR100_DIR)
    return buf.getvalue()


@pytest.fixture
def archive_server(tmp_path):
    blob = _archive(tmp_path)
    with serve_bytes(blob, data.CIFAR100_ARCHIVE) as (url, gets):
        yield url, hashlib.md5(blob).hexdigest(), gets


def test_the_official_mirror_and_md5_are_the_published_ones():
    assert data.LAYOUTS["cifar100"].url == "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    assert data.LAYOUTS["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"


def test_download_verifies_md5_unpacks_and_loads_100_fine_classes(tmp_path, archive_server):
    url, md5, gets = archive_server
    seen = []
    root = data.download(tmp_path / "dl", url=url, md5=md5, layout=data.CIFAR100,
                         progress=lambda done, total: seen.append((done, total)))
    assert root == tmp_path / "dl" / data.CIFAR100_DIR and (tmp_path / "dl" / data.CIFAR100_ARCHIVE).is_file()
    assert seen and seen[-1][0] == seen[-1][1] > 0  # chunked, with the total the server announced
    ds = data.load("cifar100", tmp_path / "dl")
    assert ds.classes == NAMES and len(ds.classes) == 100
    assert ds.train.images.shape == (300, 3, 32, 32) and ds.train.images.dtype == np.uint8
    assert np.bincount(ds.train.labels).tolist() == [3] * 100 and np.bincount(ds.val.labels).tolist() == [2] * 100
    assert data.present(tmp_path / "dl", "cifar100") and not data.present(tmp_path / "dl", "cifar10")
    assert len(gets) == 1


def test_a_wrong_md5_is_refused_and_nothing_half_written_remains(tmp_path, archive_server):
    url, _, _ = archive_server
    with pytest.raises(data.DatasetError, match="md5") as e:
        data.download(tmp_path / "dl", url=url, md5="0" * 32, layout=data.CIFAR100)
    assert data.CIFAR100_ARCHIVE in str(e.value)
    assert not any((tmp_path / "dl").iterdir())


def test_load_checks_the_published_md5_when_it_downloads(tmp_path, archive_server):
    """Through `load` (as a run downloads), another mirror is still held to the official archive's md5: the
    generated archive is refused, and nothing is left behind."""
    url, md5, gets = archive_server
    with pytest.raises(data.DatasetError, match=f"expected {data.CIFAR100_MD5}"):
        data.load("cifar100", tmp_path / "dl", allow_download=True, url=url)
    assert len(gets) == 1 and not any((tmp_path / "dl").iterdir())


def test_a_local_archive_or_folder_is_read_without_a_download(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / data.CIFAR100_ARCHIVE).write_bytes(_archive(tmp_path))
    assert len(data.load("cifar100", tmp_path / "a").classes) == 100
    _write(tmp_path / "f")
    assert len(data.load("cifar100", tmp_path / "f" / data.CIFAR100_DIR).val) == 200  # the folder itself


def test_missing_cifar100_says_where_it_looked(tmp_path):
    with pytest.raises(data.DatasetError) as e:
        data.load("cifar100", tmp_path / "nowhere")
    from worker.finetune import FLAGS
    msg = e.value.phrase(FLAGS)
    assert "CIFAR-100 not found" in msg and str(tmp_path / "nowhere" / data.CIFAR100_DIR / "test") in msg
    assert data.CIFAR100_ARCHIVE in msg and "--download" in msg


def test_wrong_class_names_and_labels_are_refused(tmp_path):
    _write(tmp_path / "names", classes=[f"c{i}" for i in range(100)])
    with pytest.raises(data.DatasetError, match="fine_label_names are not CIFAR-100's.*0: 'c0' \\(expected 'apple'\\)"):
        data.load("cifar100", tmp_path / "names")

    root = _write(tmp_path / "labels")
    d = pickle.loads((root / "test").read_bytes())
    d["fine_labels"][0] = 100
    (root / "test").write_bytes(pickle.dumps(d))
    with pytest.raises(data.DatasetError, match=r"labels must lie in 0..99, found 0..100"):
        data.load("cifar100", tmp_path / "labels")

    root = _write(tmp_path / "coarse")  # a CIFAR-10-style batch ('labels') is not a CIFAR-100 split
    d = pickle.loads((root / "train").read_bytes())
    (root / "train").write_bytes(pickle.dumps({"data": d["data"], "labels": d["fine_labels"]}))
    with pytest.raises(data.DatasetError, match="expected 'data' and 'fine_labels'"):
        data.load("cifar100", tmp_path / "coarse")


def test_a_class_missing_from_a_split_is_named(tmp_path):
    root = _write(tmp_path / "d", n_train=99)  # labels 0..98: class 99 has no training image
    assert root.is_dir()
    with pytest.raises(data.DatasetError, match=r"training set has no images of 1 class\(es\) \[99\]"):
        data.load("cifar100", tmp_path / "d")


def test_the_stratified_subset_draws_from_all_100_classes(tmp_path):
    _write(tmp_path / "d")
    ds = data.load("cifar100", tmp_path / "d")
    sub = data.stratified_subset(ds.train, 2, seed=1)
    assert np.bincount(sub.labels, minlength=100).tolist() == [2] * 100
    with pytest.raises(data.DatasetError, match="train_per_class=4 but class 0 has only 3 images"):
        data.stratified_subset(ds.train, 4, seed=1)


@pytest.mark.train
def test_a_tiny_run_on_cifar100_has_a_100_way_head_and_100_class_metrics(tmp_path):
    _write(tmp_path / "data")
    cfg = TrainConfig(model="deit_tiny_patch16_224", dataset="cifar100", weights="none", image_size=32, epochs=1,
                      batch_size=64, train_per_class=2, val_limit=100, precision="fp32", seed=0)
    summary = run(cfg, Paths(tmp_path / "data", tmp_path / "out"))
    assert summary["status"] == "succeeded", summary
    assert summary["paper_val_acc"] is None  # the paper has no CIFAR-100 number
    row = json.loads((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(row["per_class_acc"]) == 100
    confusion = np.array(row["confusion"])
    assert confusion.shape == (100, 100) and confusion.sum() == 100
    ck = torch.load(tmp_path / "out" / "checkpoint.pt", map_location="cpu", weights_only=False)
    outs = {tuple(v.shape) for k, v in ck["model"].items() if k.startswith("heads.") and v.ndim == 2}
    assert (100, 256) in outs and not any(o[0] == 10 for o in outs), outs  # Linear(256, 100): 100 logits


def test_an_unknown_dataset_is_named_and_cifar10_layouts_are_not_taken_for_cifar100(tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; known: \['cifar10', 'cifar100'\]"):
        data.load("imagenet", tmp_path)
    train, val = data.generated(20, 10)
    data.write_cifar_batches(tmp_path, train, val)  # a CIFAR-10 folder only
    assert data.present(tmp_path, "cifar10") and not data.present(tmp_path, "cifar100")
    with pytest.raises(data.DatasetError, match="CIFAR-100 not found"):
        data.load("cifar100", tmp_path)


def test_a_missing_dataset_on_the_job_page_says_the_labs_fix_not_the_cli_flag(tmp_path):
    """The job page shows the worker's error: it names the folders looked at and the lab's switch
    (BLOCKLAB_ALLOW_DOWNLOAD), where the command line names --download."""
    from worker.queue.tasks import job_error_text
    with pytest.raises(data.DatasetError) as e:
        data.load("cifar100", tmp_path)
    from worker.finetune import FLAGS
    cli, web = e.value.phrase(FLAGS), job_error_text(e.value)
    assert "--download" in cli and "--download" not in web and "BLOCKLAB_ALLOW_DOWNLOAD=true" in web
    assert str(tmp_path / data.CIFAR100_ARCHIVE) in web and "cifar-100-python/" in web
