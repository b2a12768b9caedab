"""Your own image folders: the dataset `folder:NAME` is `<data dir>/folders/NAME/`, laid out as torchvision's
ImageFolder reads it (`train/<class>/*.jpg|png`, `val/<class>/*`).

The scan is here, torch-free and numpy-free, because the backend lists the folders (GET /api/datasets), checks a
config that names one and serves its thumbnails, and the engine trains on them: both read through this one listing.
Decoding the images is core/datasets.py's (PIL).

What a researcher's folder holds is not trusted: the name is one path segment (no `/`, no `..`); the folder, its
class folders and its files must lie inside the data folder once links are followed (a link out is skipped and
listed); a folder that breaks the layout (no classes, one class, a class missing from val or from train, a class
without images) is refused with a message that says what is wrong where. Files that are not images by their suffix
are skipped and listed; images that do not decode are skipped and listed when they are read.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import SetupError

PREFIX = "folder:"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # one path segment: never '..', never '/'
SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "val")
MAX_CLASSES = 1000  # the head's width is the class count; a deeper tree is more likely a wrong folder
MAX_FILES = 200_000  # per split: a listing that big is read into memory at the image size
SHOWN = 20  # skipped files named in a message (the count is always complete)


class DatasetError(SetupError):
    """A dataset problem a user can fix; the problem says where we looked, the fixes what to do (core/errors.py),
    which each front end says in its own terms (the job page: BLOCKLAB_ALLOW_DOWNLOAD; the command line:
    --download)."""


class FolderError(DatasetError, ValueError):
    """A folder dataset the lab cannot use; the message says what is wrong where and what the layout must be. A
    DatasetError (the engine, the worker and the CLI report it as one) and a ValueError (a config check's 422)."""


@dataclass(frozen=True)
class Folder:
    """A scanned folder: its classes (sorted, the label order), each split's images as (path relative to the
    folder, label) in a fixed order, and the entries it skipped with the reason."""
    name: str
    root: Path
    classes: tuple[str, ...]
    train: tuple[tuple[str, int], ...]
    val: tuple[tuple[str, int], ...]
    skipped: tuple[tuple[str, str], ...]

    @property
    def id(self) -> str:
        return PREFIX + self.name

    def smallest_class(self) -> tuple[str, int]:
        """The training class with the fewest images, and that count: the most train_per_class can draw (it takes
        that many images of every class)."""
        counts = Counter(label for _, label in self.train)
        label = min(range(len(self.classes)), key=lambda k: (counts[k], k))
        return self.classes[label], counts[label]


LAYOUT = "train/<class>/*.jpg|png and val/<class>/* (one folder per class, the same classes in both)"


def folders_dir(data_dir: Path | None = None) -> Path:
    if data_dir is None:
        from .settings import get_settings
        data_dir = get_settings().data_path
    return Path(data_dir) / "folders"


def name_of(dataset: str) -> str:
    """NAME of `folder:NAME`, checked to be one harmless path segment."""
    name = dataset[len(PREFIX):] if dataset.startswith(PREFIX) else dataset
    if not NAME.fullmatch(name):
        raise FolderError(f"{dataset!r}: a folder name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                          "letter or digit (the folder <data dir>/folders/NAME)")
    return name


def _inside(path: Path, top: Path) -> bool:
    try:
        return path.resolve().is_relative_to(top)
    except (OSError, RuntimeError):  # a link loop
        return False


def scan(dataset: str, data_dir: Path | None = None) -> Folder:
    """List `folder:NAME` (or NAME): its classes and images, or FolderError saying what is wrong where (a folder
    the lab may not read too)."""
    name = name_of(dataset)
    try:
        return _scan(name, data_dir)
    except OSError as e:
        raise FolderError(f"folder:{name}: cannot read {e.filename or 'it'} ({e.strerror or e}); make it readable "
                          "for the lab") from None


def _readable_name(name: str) -> bool:
    """A name the API can carry: a file system's bytes that are not UTF-8 come as lone surrogates."""
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _scan(name: str, data_dir: Path | None) -> Folder:
    base = folders_dir(data_dir)
    top = Path(base).resolve().parent  # the data folder: nothing is read outside it
    root = base / name
    where = f"folder:{name} ({root})"
    if not root.is_dir():
        raise FolderError(f"{where} does not exist; put your images there as {LAYOUT}")
    if not _inside(root, top):
        raise FolderError(f"{where} links outside the data folder {top}; copy the images into it instead")
    root = root.resolve()
    skipped: list[tuple[str, str]] = []
    per_split = {}
    for split in SPLITS:
        d = root / split
        if not d.is_dir() or not _inside(d, root):
            raise FolderError(f"{where}: no {split}/ folder; the layout is {LAYOUT}")
        per_split[split] = _class_dirs(d, split, skipped)
    train, val = set(per_split["train"]), set(per_split["val"])
    if not train:
        raise FolderError(f"{where}: train/ holds no class folders; the layout is {LAYOUT}")
    if len(train) == 1:
        raise FolderError(f"{where}: train/ holds one class ({next(iter(train))!r}); a classifier needs two or "
                          "more")
    if len(train) > MAX_CLASSES:
        raise FolderError(f"{where}: train/ holds {len(train):,} class folders, more than {MAX_CLASSES:,}")
    if train - val:
        raise FolderError(f"{where}: val/ lacks the class folder(s) {_names(train - val)} that train/ has; every "
                          "class needs validation images")
    if val - train:
        raise FolderError(f"{where}: val/ has class folder(s) {_names(val - train)} that train/ lacks; a class "
                          "the model never trains on cannot be validated")
    classes = tuple(sorted(train))
    lists = {}
    for split in SPLITS:
        files = []
        for label, c in enumerate(classes):
            found = _images(root, f"{split}/{c}", skipped)
            if not found:
                raise FolderError(f"{where}: {split}/{c}/ holds no images (.jpg, .jpeg or .png)")
            files.append([(f, label) for f in found])
        if sum(map(len, files)) > MAX_FILES:
            raise FolderError(f"{where}: {split}/ holds more than {MAX_FILES:,} images")
        # Validation round-robin across the classes, so that a val_limit takes every class (as CIFAR's mixed
        # test set); training class by class (the subset is drawn per class anyway).
        lists[split] = tuple(x for group in _round_robin(files) for x in group) if split == "val" else tuple(
            x for group in files for x in group)
    return Folder(name, root, classes, lists["train"], lists["val"], tuple(skipped))


def _names(names: set[str]) -> str:
    shown = sorted(names)[:SHOWN]
    return ", ".join(repr(n) for n in shown) + (" …" if len(names) > SHOWN else "")


def _class_dirs(d: Path, split: str, skipped: list) -> list[str]:
    out = []
    with os.scandir(d) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            if not _readable_name(e.name):
                skipped.append((f"{split}/{e.name.encode('utf-8', 'replace').decode()}", "name is not UTF-8"))
            elif not e.is_dir():
                skipped.append((f"{split}/{e.name}", "not a class folder"))
            elif not _inside(Path(e.path), d.resolve()):
                skipped.append((f"{split}/{e.name}", "links outside the folder"))
            else:
                out.append(e.name)
    return out


def _images(root: Path, rel: str, skipped: list) -> list[str]:
    """The image files of one class folder, sorted; links out of the folder and other files skipped."""
    out = []
    with os.scandir(root / rel) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        path = f"{rel}/{e.name}"
        if e.name.startswith("."):
            continue
        if not _readable_name(e.name):
            skipped.append((f"{rel}/{e.name.encode('utf-8', 'replace').decode()}", "name is not UTF-8"))
        elif not e.name.lower().endswith(SUFFIXES):
            skipped.append((path, "not a .jpg, .jpeg or .png file"))
        elif e.is_symlink() and not _inside(Path(e.path), root):
            skipped.append((path, "links outside the folder"))
        elif not e.is_file():
            skipped.append((path, "not a file"))
        else:
            out.append(path)
    return out


def _round_robin(groups: list[list]) -> list[list]:
    longest = max(map(len, groups))
    return [[g[i] for g in groups if i < len(g)] for i in range(longest)]


def resolve(folder: Folder, rel: str) -> Path:
    """The file of a listed image, checked again at read time (the folder may have changed since the scan)."""
    path = folder.root / rel
    if not _inside(path, folder.root):
        raise FolderError(f"{rel} leads outside folder:{folder.name}")
    return path


def spec(dataset: str, data_dir: Path | None = None):
    """The folder as a catalogue.DatasetSpec (no paper number on it)."""
    from .catalogue import DatasetSpec
    f = scan(dataset, data_dir)
    return DatasetSpec(f.id, f"{f.name} (your folder)", f.classes, in_paper=False, archive="",
                       folder=f"folders/{f.name}", archive_mb=0, train_size=len(f.train), val_size=len(f.val))


def available(data_dir: Path | None = None) -> list[dict]:
    """Every folder under `<data dir>/folders`: usable ones as catalogue entries, the others with why not."""
    base = folders_dir(data_dir)
    try:
        entries = sorted(os.scandir(base), key=lambda e: e.name) if base.is_dir() else []
    except OSError:  # a folders/ the lab may not read: nothing to offer (a config naming one says why)
        return []
    out = []
    for e in entries:
        if e.name.startswith(".") or not e.is_dir() or not NAME.fullmatch(e.name):
            continue
        entry = {"id": PREFIX + e.name, "name": e.name}
        try:
            entry["spec"] = spec(PREFIX + e.name, data_dir)
        except (FolderError, OSError) as err:
            entry["error"] = str(err)
        out.append(entry)
    return out
