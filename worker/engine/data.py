"""CIFAR-10 and CIFAR-100 as torchvision's root holds them: the official python layout or the official archive.

Everything lives in uint8 arrays (N, 3, 32, 32); resizing and normalization happen later, batched, in
`preprocess.py`. The paper's validation set is the CIFAR-10 test set; CIFAR-100's test set plays that part for it
(its 100 fine labels; the paper has no number on it). Both datasets are located, downloaded (md5-checked) and
unpacked by one code path, told apart by their `Layout`.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core import catalogue

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # published with the archive
ARCHIVE_NAME = catalogue.DATASETS["cifar10"].archive
BATCHES_DIR = catalogue.DATASETS["cifar10"].folder

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published with the archive
CIFAR100_ARCHIVE = catalogue.DATASETS["cifar100"].archive
CIFAR100_DIR = catalogue.DATASETS["cifar100"].folder


@dataclass(frozen=True)
class Layout:
    """Where a dataset's official archive comes from and what it unpacks to: `folder` holds the `markers` files
    once it is there (the test split first: the file a half-copied folder is likeliest to lack)."""
    dataset: str  # core.catalogue.DATASETS key
    title: str
    url: str
    md5: str
    archive: str
    folder: str
    markers: tuple[str, ...]


CIFAR10 = Layout("cifar10", "CIFAR-10", CIFAR10_URL, CIFAR10_MD5, ARCHIVE_NAME, BATCHES_DIR, ("test_batch",))
CIFAR100 = Layout("cifar100", "CIFAR-100", CIFAR100_URL, CIFAR100_MD5, CIFAR100_ARCHIVE, CIFAR100_DIR,
                  ("test", "train"))
LAYOUTS: dict[str, Layout] = {lay.dataset: lay for lay in (CIFAR10, CIFAR100)}


class DatasetError(RuntimeError):
    """A dataset problem a user can fix; the message says where we looked and what to do. `web`: the same in the
    lab's terms where the fix differs from the command line's (the job page shows it)."""

    def __init__(self, message: str, web: str | None = None):
        super().__init__(message)
        self.web = web


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 3, 32, 32)
    labels: np.ndarray  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Cifar10:
    """A loaded dataset (CIFAR-10 or CIFAR-100: the name is the first one's); `classes` in label order."""
    train: Split
    val: Split
    classes: tuple[str, ...]
    source: str  # where it was read from


Dataset = Cifar10  # the dataset-neutral name for the same class


def _load_pickle(path: Path) -> dict:
    # Official files were pickled by Python 2: latin1 gives str keys; bytes keys are accepted too.
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="latin1")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


def _read_batch(path: Path, key: str = "labels", classes: int = 10, title: str = "CIFAR-10") -> Split:
    """One pickled split: uint8 'data' (N, 3072) and its labels under `key` (CIFAR-100: 'fine_labels')."""
    d = _load_pickle(path)
    if "data" not in d or key not in d:
        raise DatasetError(f"{path} is not a {title} batch (keys {sorted(d)}); expected 'data' and {key!r}.")
    data = np.asarray(d["data"])
    labels = np.asarray(d[key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}.")
    if len(labels) != len(data):
        raise DatasetError(f"{path}: {len(data)} images but {len(labels)} labels.")
    if len(labels) and (labels.min() < 0 or labels.max() > classes - 1):
        raise DatasetError(f"{path}: labels must lie in 0..{classes - 1}, found {labels.min()}..{labels.max()}.")
    return Split(data.reshape(-1, 3, 32, 32), labels)


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(data_dir: Path, url: str | None = None, md5: str | None = None,
             progress: Callable[[int, int], None] | None = None, layout: Layout = CIFAR10) -> Path:
    """Fetch the official archive into data_dir, verify its md5 (the published one unless given), then unpack it.
    `progress(done, total)` is called at every chunk read (at most 64 KiB, as they arrive); whatever it raises (a
    stop: StopRequested) aborts the download and removes the partial file."""
    url, md5 = url or layout.url, md5 or layout.md5
    data_dir.mkdir(parents=True, exist_ok=True)
    archive = data_dir / layout.archive
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
                               f"Retry, or place the official {layout.archive} in the data directory.")
        os.replace(tmp, archive)
    except OSError as e:
        raise DatasetError(f"could not download {layout.title} from {url} into {data_dir}: {e}. Offline? Copy the "
                           f"official {layout.folder}/ folder or {layout.archive} into {data_dir}.") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _extract(archive, data_dir, layout)
    return data_dir / layout.folder


def _extract(archive: Path, data_dir: Path, layout: Layout = CIFAR10) -> None:
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(layout.folder + "/") and m.isfile()]
        if not members:
            raise DatasetError(f"{archive} holds no {layout.folder}/ folder; is it the official {layout.title} "
                               "archive?")
        tmp = Path(tempfile.mkdtemp(dir=data_dir))
        try:
            tar.extractall(tmp, members=members, filter="data")
            target = data_dir / layout.folder
            if not target.exists():
                shutil.move(str(tmp / layout.folder), target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _found(data_dir: Path, layout: Layout) -> Path | None:
    for candidate in (data_dir / layout.folder, data_dir):
        if all((candidate / m).is_file() for m in layout.markers):
            return candidate
    return None


def present(data_dir: Path, dataset: str = "cifar10") -> bool:
    """What `locate` accepts without downloading: the dataset's folder or its official archive."""
    layout = LAYOUTS[dataset]
    return _found(Path(data_dir), layout) is not None or (Path(data_dir) / layout.archive).is_file()


def locate(data_dir: Path, allow_download: bool = False, url: str | None = None,
           progress: Callable[[int, int], None] | None = None, layout: Layout = CIFAR10) -> Path:
    """The dataset's folder under data_dir: as-is, unpacked from a local archive, or downloaded."""
    data_dir = Path(data_dir)
    found = _found(data_dir, layout)
    if found is not None:
        return found
    if (data_dir / layout.archive).is_file():
        _extract(data_dir / layout.archive, data_dir, layout)
        return data_dir / layout.folder
    if allow_download:
        return download(data_dir, url=url, progress=progress, layout=layout)
    looked = " and ".join(str(data_dir / layout.folder / m) for m in layout.markers)
    said = (f"{layout.title} not found: looked for {looked} and {data_dir / layout.archive}. "
            f"Copy the official {layout.folder}/ folder or {layout.archive} there, or allow the download ")
    raise DatasetError(said + "(--download on the command line).",
                       web=said + "(BLOCKLAB_ALLOW_DOWNLOAD=true for the worker), then resume the job.")


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
    _check_every_class(root, train, val, 10)
    return Cifar10(train, val, classes, str(root))


def load_cifar100(data_dir: Path, allow_download: bool = False, url: str | None = None,
                  progress: Callable[[int, int], None] | None = None) -> Cifar10:
    """CIFAR-100 with its 100 fine labels (`train`, `test`, `meta`), from data_dir or its mirror; its class names
    must be the catalogue's (core.catalogue.DATASETS), which the backend serves without reading the archive."""
    root = locate(Path(data_dir), allow_download=allow_download, url=url, progress=progress, layout=CIFAR100)
    expected = catalogue.DATASETS["cifar100"].classes
    read = lambda name: _read_batch(root / name, "fine_labels", len(expected), "CIFAR-100")  # noqa: E731
    train, val = read("train"), read("test")
    if (root / "meta").is_file():
        names = tuple(_load_pickle(root / "meta").get("fine_label_names", ()))
        if names != expected:
            wrong = [f"{i}: {a!r} (expected {b!r})" for i, (a, b) in enumerate(zip(names, expected)) if a != b]
            raise DatasetError(f"{root / 'meta'}: fine_label_names are not CIFAR-100's ({len(names)} names; "
                               f"{', '.join(wrong[:3]) or 'a different count'}); is it the official archive?")
    _check_every_class(root, train, val, len(expected))
    return Cifar10(train, val, expected, str(root))


def _check_every_class(root: Path, train: Split, val: Split, classes: int) -> None:
    for name, split in (("training", train), ("test", val)):
        counts = np.bincount(split.labels, minlength=classes)
        if (counts == 0).any():
            missing = [int(i) for i in np.flatnonzero(counts == 0)]
            raise DatasetError(f"{root}: the {name} set has no images of {len(missing)} class(es) "
                               f"{missing[:20]}{' …' if len(missing) > 20 else ''}.")


def stratified_subset(split: Split, per_class: int | None, seed: int, num_classes: int | None = None) -> Split:
    """K images of every class, drawn with a seeded generator (the same K and seed give the same images).
    The classes are 0..num_classes-1 (default: up to the largest label present: 10 for CIFAR-10, 100 for
    CIFAR-100, whose loaders check that every class is there)."""
    if per_class is None:
        return split
    if num_classes is None:
        num_classes = int(split.labels.max()) + 1 if len(split) else 0
    rng = np.random.default_rng(seed)
    idx = []
    for c in range(num_classes):
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


def write_cifar100(root: Path, train: Split, val: Split, classes=None) -> Path:
    """Write splits in CIFAR-100's official python layout (`train`, `test`, `meta`; fine and coarse labels), for
    generated data and tests. The coarse labels are placeholders (fine // 5): nothing here reads them."""
    out = Path(root) / CIFAR100_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("test", val)):
        with open(out / name, "wb") as f:
            pickle.dump({"filenames": [f"img{i}.png" for i in range(len(split))], "batch_label": name,
                         "fine_labels": [int(x) for x in split.labels],
                         "coarse_labels": [int(x) // 5 for x in split.labels],
                         "data": split.images.reshape(len(split), 3072).astype(np.uint8)}, f)
    with open(out / "meta", "wb") as f:
        pickle.dump({"fine_label_names": list(classes or catalogue.DATASETS["cifar100"].classes),
                     "coarse_label_names": [f"superclass{i}" for i in range(20)]}, f)
    return out


def generated(n_train: int, n_val: int, seed: int = 0, num_classes: int = 10) -> tuple[Split, Split]:
    """Random CIFAR-sized images with balanced labels: for benchmarks and tests where the real data is absent."""
    rng = np.random.default_rng(seed)

    def make(n):
        return Split(rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8),
                     (np.arange(n) % num_classes).astype(np.int64))
    return make(n_train), make(n_val)


def load(dataset: str, data_dir: Path, allow_download: bool = False, url: str | None = None,
         progress: Callable[[int, int], None] | None = None) -> Cifar10:
    """The dataset a config names (core.catalogue.DATASETS), from `data_dir` or its mirror (`url`: another one)."""
    loaders = {"cifar10": load_cifar10, "cifar100": load_cifar100}
    if dataset not in loaders:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(loaders)}")
    return loaders[dataset](data_dir, allow_download, url or LAYOUTS[dataset].url, progress=progress)
