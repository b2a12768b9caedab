"""CIFAR-10 as torchvision's root holds it: the official python layout or the official archive.

Everything lives in uint8 arrays (N, 3, 32, 32); resizing and normalization happen later, batched, in
`preprocess.py`. The paper's validation set is the CIFAR-10 test set.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published with the archive
ARCHIVE_NAME = "cifar-10-python.tar.gz"
BATCHES_DIR = "cifar-10-batches-py"


class DatasetError(RuntimeError):
    """A dataset problem a user can fix; the message says where we looked and what to do."""


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 3, 32, 32)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Cifar10:
    train: Split
    val: Split
    classes: tuple[str, ...]
    source: str  # where it was read from


def _load_pickle(path: Path) -> dict:
    # Official files were pickled by Python 2: latin1 gives str keys; bytes keys are accepted too.
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_batch(path: Path) -> Split:
    d = _load_pickle(path)
    if "data" not in d or "labels" not in d:
        raise DatasetError(f"{path} is not a CIFAR-10 batch (keys {sorted(d)}); expected 'data' and 'labels'.")
    data = np.asarray(d["data"])
    labels = np.asarray(d["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}.")
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels.")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}: labels must lie in 0..9, found {labels.min()}..{labels.max()}.")
    return Split(data.reshape(-1, 3, 32, 32), labels)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(data_dir: Path, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
             progress: Callable[[int, int], None] | None = None) -> Path:
    """Fetch the official archive into data_dir, verify its published md5, then unpack it. `progress(done, total)`
    is called at every chunk read (at most 64 KiB, as they arrive); whatever it raises (a stop: StopRequested)
    aborts the download and removes the partial file."""
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / ARCHIVE_NAME
    fd, tmp = tempfile.mkstemp(dir=data_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            for chunk in iter(lambda: resp.read1(1 << 16), b""):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        got = _md5(Path(tmp))
        if got != md5:
            raise DatasetError(f"download from {url} has md5 {got}, expected {md5}; nothing was kept. "
                               "Retry, or place the official cifar-10-python.tar.gz in the data directory.")
        os.replace(tmp, archive)
    except OSError as e:
        raise DatasetError(f"could not download CIFAR-10 from {url} into {data_dir}: {e}. Offline? Copy the "
                           f"official {BATCHES_DIR}/ folder or {ARCHIVE_NAME} into {data_dir}.") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _extract(archive, data_dir)
    return data_dir / BATCHES_DIR


def _extract(archive: Path, data_dir: Path) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(BATCHES_DIR + "/") and m.isfile()]
        if not members:
            raise DatasetError(f"{archive} holds no {BATCHES_DIR}/ folder; is it the official CIFAR-10 archive?")
        tmp = Path(tempfile.mkdtemp(dir=data_dir))
        try:
            tar.extractall(tmp, members=members, filter="data")
            target = data_dir / BATCHES_DIR
            if not target.exists():
                shutil.move(str(tmp / BATCHES_DIR), target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def locate(data_dir: Path, allow_download: bool = False, url: str = CIFAR10_URL,
           progress: Callable[[int, int], None] | None = None) -> Path:
    """The batches folder under data_dir: as-is, unpacked from a local archive, or downloaded."""
    data_dir = Path(data_dir)
    for candidate in (data_dir / BATCHES_DIR, data_dir):
        if (candidate / "test_batch").is_file():
            return candidate
    if (data_dir / ARCHIVE_NAME).is_file():
        _extract(data_dir / ARCHIVE_NAME, data_dir)
        return data_dir / BATCHES_DIR
    if allow_download:
        return download(data_dir, url=url, progress=progress)
    raise DatasetError(
        f"CIFAR-10 not found: looked for {data_dir / BATCHES_DIR}/test_batch and {data_dir / ARCHIVE_NAME}. "
        f"Copy the official {BATCHES_DIR}/ folder or {ARCHIVE_NAME} there, or allow the download "
        "(--download on the command line).")


def load_cifar10(data_dir: Path, allow_download: bool = False, url: str = CIFAR10_URL,
                 progress: Callable[[int, int], None] | None = None) -> Cifar10:
    """The dataset from data_dir (downloaded first when allowed and absent; `progress`: see `download`)."""
    root = locate(Path(data_dir), allow_download=allow_download, url=url, progress=progress)
    batches = sorted(root.glob("data_batch_*"))
    if not batches:
        raise DatasetError(f"no training batches (data_batch_*) in {root}.")
    parts = [_read_batch(b) for b in batches]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    val = _read_batch(root / "test_batch")
    classes = tuple(f"class{i}" for i in range(10))
    if (root / "batches.meta").is_file():
        classes = tuple(_load_pickle(root / "batches.meta").get("label_names", classes))
    for name, split in (("training", train), ("test", val)):
        present = np.bincount(split.labels, minlength=10)
        if (present == 0).any():
            raise DatasetError(f"{root}: the {name} set has no images of class(es) "
                               f"{[int(i) for i in np.flatnonzero(present == 0)]}.")
    return Cifar10(train, val, classes, str(root))


def stratified_subset(split: Split, per_class: int | None, seed: int) -> Split:
    """K images of every class, drawn with a seeded generator (the same K and seed give the same images)."""
    if per_class is None:
        return split
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(10):
        members = np.flatnonzero(split.labels == c)
        if per_class > len(members):
            raise DatasetError(f"train_per_class={per_class} but class {c} has only {len(members)} images.")
        idx.append(rng.choice(members, size=per_class, replace=False))
    order = np.sort(np.concatenate(idx))
    return Split(split.images[order], split.labels[order])


def limit(split: Split, n: int | None) -> Split:
    """The first n images of the test set (its order is already mixed across classes)."""
    if n is None or n >= len(split):
        return split
    return Split(split.images[:n], split.labels[:n])


def fingerprint(split: Split) -> str:
    """Content hash of images and labels: part of the feature-cache key."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(split.images).tobytes())
    h.update(np.ascontiguousarray(split.labels).tobytes())
    return h.hexdigest()[:32]


def write_cifar_batches(root: Path, train: Split, val: Split, classes=None, batches: int = 1) -> Path:
    """Write splits in the official python layout (used for generated data and tests)."""
    out = Path(root) / BATCHES_DIR
    out.mkdir(parents=True, exist_ok=True)
    for i, chunk in enumerate(np.array_split(np.arange(len(train)), batches), start=1):
        _dump(out / f"data_batch_{i}", train.images[chunk], train.labels[chunk], f"training batch {i}")
    _dump(out / "test_batch", val.images, val.labels, "testing batch 1")
    with open(out / "batches.meta", "wb") as f:
        pickle.dump({"label_names": list(classes or [f"class{i}" for i in range(10)]),
                     "num_cases_per_batch": len(train) // batches, "num_vis": 3072}, f)
    return out


def _dump(path: Path, images: np.ndarray, labels: np.ndarray, label: str) -> None:
    with open(path, "wb") as f:
        pickle.dump({"batch_label": label, "labels": [int(x) for x in labels],
                     "data": images.reshape(len(images), 3072).astype(np.uint8),
                     "filenames": [f"img{i}.png" for i in range(len(images))]}, f)


def generated(n_train: int, n_val: int, seed: int = 0) -> tuple[Split, Split]:
    """Random CIFAR-sized images with balanced labels: for benchmarks and tests where CIFAR-10 is absent."""
    rng = np.random.default_rng(seed)

    def make(n):
        return Split(rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8),
                     (np.arange(n) % 10).astype(np.int64))
    return make(n_train), make(n_val)
