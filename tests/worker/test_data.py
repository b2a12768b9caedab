import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.worker.hubserver import serve_bytes
from worker.engine import data


def test_reads_the_real_subset_with_str_keys(real_cifar_dir):
    ds = data.load_cifar10(real_cifar_dir)
    assert ds.train.images.shape == (10000, 3, 32, 32) and ds.train.images.dtype == np.uint8
    assert len(ds.val) == 10000 and np.bincount(ds.val.labels).tolist() == [1000] * 10
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"


def test_reads_bytes_keys_and_many_batches(tmp_path):
    train, val = data.generated(30, 20)
    out = tmp_path / data.BATCHES_DIR
    out.mkdir()
    for i, chunk in enumerate(np.array_split(np.arange(30), 3), start=1):
        with open(out / f"data_batch_{i}", "wb") as f:  # bytes keys, as Python 2 pickles read with "bytes"
            pickle.dump({b"data": train.images[chunk].reshape(-1, 3072), b"labels": train.labels[chunk].tolist()}, f)
    with open(out / "test_batch", "wb") as f:
        pickle.dump({b"data": val.images.reshape(-1, 3072), b"labels": val.labels.tolist()}, f)
    ds = data.load_cifar10(tmp_path)
    assert len(ds.train) == 30 and (ds.train.images == train.images).all()


def _bad(tmp_path, **kw):
    train, val = data.generated(20, 20)
    data.write_cifar_batches(tmp_path, train, val)
    d = {"data": val.images.reshape(-1, 3072), "labels": val.labels.tolist(), **kw}
    with open(tmp_path / data.BATCHES_DIR / "test_batch", "wb") as f:
        pickle.dump(d, f)


def test_validation_errors_name_the_problem(tmp_path):
    _bad(tmp_path, labels=[11] * 20)
    with pytest.raises(data.DatasetError, match="labels must lie in 0..9"):
        data.load_cifar10(tmp_path)
    _bad(tmp_path, data=np.zeros((20, 100), np.uint8))
    with pytest.raises(data.DatasetError, match=r"shape \(N, 3072\)"):
        data.load_cifar10(tmp_path)


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(data.DatasetError) as e:
        data.load_cifar10(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)


def _archive(tmp_path) -> bytes:
    src = tmp_path / "src"
    train, val = data.generated(20, 10)
    data.write_cifar_batches(src, train, val)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src / data.BATCHES_DIR, arcname=data.BATCHES_DIR)
    return buf.getvalue()


def test_reads_a_local_archive(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / data.ARCHIVE_NAME).write_bytes(_archive(tmp_path))
    assert len(data.load_cifar10(tmp_path / "d").train) == 20


@pytest.fixture
def archive_server(tmp_path):
    blob = _archive(tmp_path)
    with serve_bytes(blob, "cifar-10-python.tar.gz") as (url, _gets):
        yield url, hashlib.md5(blob).hexdigest()


def test_download_verifies_md5_then_unpacks(tmp_path, archive_server):
    url, md5 = archive_server
    root = data.download(tmp_path / "dl", url=url, md5=md5)
    assert (root / "test_batch").is_file() and (tmp_path / "dl" / data.ARCHIVE_NAME).is_file()


def test_download_with_wrong_md5_keeps_nothing(tmp_path, archive_server):
    url, _ = archive_server
    with pytest.raises(data.DatasetError, match="md5"):
        data.download(tmp_path / "dl", url=url, md5="0" * 32)
    assert not any(Path(tmp_path / "dl").iterdir())


def test_stratified_subset_is_balanced_and_seeded(real_cifar_dir):
    ds = data.load_cifar10(real_cifar_dir)
    a = data.stratified_subset(ds.train, 7, seed=3)
    b = data.stratified_subset(ds.train, 7, seed=3)
    c = data.stratified_subset(ds.train, 7, seed=4)
    assert np.bincount(a.labels).tolist() == [7] * 10
    assert (a.images == b.images).all() and not (a.images == c.images).all()
