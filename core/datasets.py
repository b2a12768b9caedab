"""The datasets' loaders: CIFAR-10 and CIFAR-100 as torchvision's root holds them (the official python layout or
the official archive), and folders of one's own images (`folder:NAME`, listed by core/folders.py).

Torch-free (numpy and PIL only), so the engine trains on what this module reads and the backend serves a job's
validation thumbnails through the same code (`val_image`): the one module of core/ that imports numpy, never
imported by the modules the backend loads at start-up.

Everything lives in uint8 arrays (N, 3, H, W): CIFAR's 32 px, a folder's images resized here to the run's image
size; the rest of the resizing and normalization happens later, batched, in the engine's `preprocess.py`. The
paper's validation set is the CIFAR-10 test set; CIFAR-100's test set plays that part for it (its 100 fine labels;
the paper has no number on it). Both CIFAR datasets are located, downloaded (md5-checked) and
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
from PIL import Image

from . import catalogue, folders
from .errors import Fix
from .folders import DatasetError  # noqa: F401 (the loaders' error: declared below them, numpy-free)

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


@dataclass
class Split:
    images: np.ndarray  # uint8 (N, 3, H, W): CIFAR 32 x 32
    labels: np.ndarray  # int64 (N,)
    # Each image's identity in its dataset (CIFAR: its index in the official split; a folder: its path inside the
    # folder): what a job's kept predictions name, so the lab shows the very image again (`val_image`).
    ids: list | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, idx: np.ndarray) -> Split:
        ids = None if self.ids is None else [self.ids[i] for i in idx]
        return Split(self.images[idx], self.labels[idx], ids)


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
    return Split(data.reshape(-1, 3, 32, 32), labels, list(range(len(labels))))


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
    raise DatasetError(f"{layout.title} not found: looked for {looked} and {data_dir / layout.archive}",
                       [Fix(file=f"the official {layout.folder}/ folder or {layout.archive}", folder="data_dir",
                            path=data_dir), Fix("download", True)])


def load_cifar10(data_dir: Path, allow_download: bool = False, url: str = CIFAR10_URL,
                 progress: Callable[[int, int], None] | None = None) -> Cifar10:
    """The dataset from data_dir (downloaded first when allowed and absent; `progress`: see `download`)."""
    root = locate(Path(data_dir), allow_download=allow_download, url=url, progress=progress)
    batches = sorted(root.glob("data_batch_*"))
    if not batches:
        raise DatasetError(f"no training batches (data_batch_*) in {root}.")
    parts = [_read_batch(b) for b in batches]
    train = Split(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))
    train.ids = list(range(len(train)))
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
    return split.take(order)


def limit(split: Split, n: int | None) -> Split:
    """The first n images of the test set (its order is already mixed across classes)."""
    if n is None or n >= len(split):
        return split
    return split.take(np.arange(n))


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
         progress: Callable[[int, int], None] | None = None, image_size: int = 224,
         on_read: Callable[[int, int], None] | None = None) -> Cifar10:
    """The dataset a config names (core.catalogue.DATASETS, or `folder:NAME`), from `data_dir` or its mirror
    (`url`: another one). A folder's images are read at `image_size` (`on_read(done, total)` as they are: it may
    raise to stop); CIFAR's stay 32 px."""
    if dataset.startswith(folders.PREFIX):
        return load_folder(dataset, data_dir, image_size, on_read)
    loaders = {"cifar10": load_cifar10, "cifar100": load_cifar100}
    if dataset not in loaders:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(loaders)} or folder:NAME")
    return loaders[dataset](data_dir, allow_download, url or LAYOUTS[dataset].url, progress=progress)


# -- folders of one's own images --------------------------------------------------------------------------------------
# Decoding limits, declared once. A photo of 64 megapixels (a 50 MP camera's) is read, JPEGs at a reduced scale
# (PIL's draft: the decoder skips the detail a 224 px input cannot hold); above it an image is skipped, so that a
# small file that claims a huge size (a decompression bomb) never allocates its pixels.
MAX_PIXELS = 64_000_000
READ_REPORT_EVERY = 64  # images between two `on_read` calls


class UnreadableImage(ValueError):
    """An image file that cannot be used: the reason, in words."""


def read_image(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 (3, size, size): any mode converted to RGB (transparency on white), any size resized
    bilinearly (as CIFAR's 32 px are upsampled). UnreadableImage when it is no image, truncated, or too large."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w * h > MAX_PIXELS:
                raise UnreadableImage(f"{w} x {h} pixels, more than the {MAX_PIXELS // 1_000_000} megapixels read")
            im.draft("RGB", (size, size))  # JPEG only: decode at the smallest scale that still covers `size`
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                im = Image.new("RGB", rgba.size, (255, 255, 255))
                im.paste(rgba, mask=rgba.getchannel("A"))
            else:
                im = im.convert("RGB")
            im = im.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as e:
        raise UnreadableImage(f"refused as a decompression bomb ({e})") from e
    except Exception as e:  # PIL raises what its decoders raise: OSError, SyntaxError, ValueError, struct.error ...
        raise UnreadableImage(f"not a readable image ({type(e).__name__}: {e})") from e


@dataclass
class FolderDataset(Cifar10):
    """A folder read into arrays: `skipped` lists (path, why) for every file it could not use."""
    skipped: tuple[tuple[str, str], ...] = ()


def load_folder(dataset: str, data_dir: Path, image_size: int = 224,
                on_read: Callable[[int, int], None] | None = None) -> FolderDataset:
    """`folder:NAME` at `image_size`: every listed image read (unreadable ones skipped and listed); a class left
    without images in a split refuses the folder, naming it."""
    try:
        f = folders.scan(dataset, data_dir)
    except folders.FolderError as e:
        raise DatasetError(str(e)) from e
    total = len(f.train) + len(f.val)
    skipped = list(f.skipped)
    done = 0

    def read(listing) -> Split:
        nonlocal done
        images, labels, ids = [], [], []
        for rel, label in listing:
            try:
                images.append(read_image(folders.resolve(f, rel), image_size))
                labels.append(label)
                ids.append(rel)
            except (UnreadableImage, folders.FolderError, OSError) as e:
                skipped.append((rel, str(e)))
            done += 1
            if on_read and (done % READ_REPORT_EVERY == 0 or done == total):
                on_read(done, total)
        arr = np.stack(images) if images else np.zeros((0, 3, image_size, image_size), np.uint8)
        return Split(arr, np.asarray(labels, dtype=np.int64), ids)

    train, val = read(f.train), read(f.val)
    for name, split in (("train", train), ("val", val)):
        counts = np.bincount(split.labels, minlength=len(f.classes))
        empty = [f.classes[i] for i in np.flatnonzero(counts == 0)]
        if empty:
            raise DatasetError(f"folder:{f.name} ({f.root}): {name}/{empty[0]}/ has no readable image"
                               f"{f' (nor {len(empty) - 1} other class(es))' if len(empty) > 1 else ''}; "
                               f"{_skipped_text(skipped)}")
    return FolderDataset(train, val, f.classes, str(f.root), tuple(skipped))


def _skipped_text(skipped) -> str:
    shown = "; ".join(f"{p}: {why}" for p, why in skipped[:folders.SHOWN])
    return f"{len(skipped)} file(s) skipped" + (f" ({shown}{' …' if len(skipped) > folders.SHOWN else ''})"
                                               if skipped else "")


def skipped_summary(dataset: Cifar10) -> dict | None:
    """What a folder's load skipped, for the run's info: the count and the first files with the reason."""
    skipped = getattr(dataset, "skipped", None)
    if skipped is None:
        return None
    return {"count": len(skipped), "files": [{"path": p, "why": w} for p, w in skipped[:folders.SHOWN]]}


# -- one validation image, for the lab's thumbnails -------------------------------------------------------------------
THUMBNAIL_PX = 96


def val_image(dataset: str, data_dir: Path, image_id, size: int = THUMBNAIL_PX) -> np.ndarray:
    """One validation image of a dataset as uint8 (3, size, size), by the id a job's predictions name (CIFAR: its
    index in the test set; a folder: its path inside the folder, which must be one the folder lists). Reads the
    data folder only: never downloads. DatasetError when the dataset or the image is not there."""
    if dataset.startswith(folders.PREFIX):
        try:
            f = folders.scan(dataset, data_dir)
            listed = {rel for rel, _ in f.val}
            if image_id not in listed:
                raise DatasetError(f"{image_id!r} is not a validation image of {dataset} (any more)")
            return read_image(folders.resolve(f, image_id), size)
        except (folders.FolderError, UnreadableImage) as e:
            raise DatasetError(str(e)) from e
    split = _cifar_val(dataset, str(Path(data_dir).resolve()))
    if not isinstance(image_id, int) or not 0 <= image_id < len(split):
        raise DatasetError(f"{dataset} has no validation image {image_id!r}")
    im = Image.fromarray(split.images[image_id].transpose(1, 2, 0))
    return np.asarray(im.resize((size, size), Image.Resampling.NEAREST), dtype=np.uint8).transpose(2, 0, 1)


_VAL_CACHE: dict = {}


def _cifar_val(dataset: str, data_dir: str) -> Split:
    """A CIFAR test set, read once per process (and again when its file changes): thumbnails come by the page."""
    layout = LAYOUTS.get(dataset)
    if layout is None:
        raise DatasetError(f"unknown dataset {dataset!r}")
    root = _found(Path(data_dir), layout)
    if root is None:
        raise DatasetError(f"{layout.title} not found in {data_dir}: the thumbnails come from the dataset the job "
                           f"used; copy the official {layout.folder}/ folder there")
    test = root / layout.markers[0]
    key = (dataset, str(test), test.stat().st_mtime_ns)
    if key not in _VAL_CACHE:
        _VAL_CACHE.clear()
        _VAL_CACHE[key] = (_read_batch(test) if dataset == "cifar10" else
                           _read_batch(test, "fine_labels", len(catalogue.DATASETS[dataset].classes), layout.title))
    return _VAL_CACHE[key]


def png(image: np.ndarray) -> bytes:
    """uint8 (3, H, W) as PNG bytes."""
    import io
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(buf, format="PNG")
    return buf.getvalue()
