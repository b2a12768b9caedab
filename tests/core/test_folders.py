"""Folders of one's own images (core/folders.py, core/datasets.py): the layout checked with messages that say what
is wrong where, images of any size and mode converted, unreadable files skipped and counted, and the bad inputs a
real folder holds (10,000 tiny files, a 50-megapixel JPEG, a decompression bomb, a truncated PNG, links out of the
data folder, odd names) each answered without a crash or a read outside the data folder."""
from __future__ import annotations

import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from core import catalogue, datasets, folders
from core.datasets import DatasetError
from tests.imagefolders import write_folder


def test_a_generated_folder_reads_every_size_and_mode_and_lists_what_it_skips(tmp_path):
    write_folder(tmp_path, "shapes", train=10, val=5)
    ds = datasets.load("folder:shapes", tmp_path, image_size=40)
    assert ds.classes == ("blue", "green", "red")  # sorted: the label order
    assert ds.train.images.shape == (30, 3, 40, 40) and ds.train.images.dtype == np.uint8
    assert ds.val.images.shape == (15, 3, 40, 40)
    assert np.bincount(ds.train.labels).tolist() == [10, 10, 10]
    # Validation round-robin across classes: a val_limit of 3 holds one of each.
    assert sorted(ds.val.labels[:3].tolist()) == [0, 1, 2]
    assert ds.val.ids[0].startswith("val/") and all(i.startswith("train/") for i in ds.train.ids)
    # The colour says the class, whatever the mode (L aside: grey): RGBA and P and CMYK came through as RGB.
    red = ds.train.images[ds.train.labels == 2].reshape(10, 3, -1).mean(-1)
    assert (red[:, 0] > red[:, 2]).sum() >= 8
    skipped = dict(ds.skipped)
    assert "truncated" in skipped["train/red/broken.png"] or "broken" in skipped["train/red/broken.png"]
    assert "not a readable image" in skipped["val/green/notes.jpg"]
    assert skipped["train/README.txt"] == "not a class folder"
    assert datasets.skipped_summary(ds)["count"] == len(ds.skipped) == 3


@pytest.mark.parametrize("make, says", [
    (lambda r: (r / "train").mkdir(parents=True) or (r / "val").mkdir(), "train/ holds no class folders"),
    (lambda r: _classes(r, train=["cat"], val=["cat"]), "one class ('cat')"),
    (lambda r: _classes(r, train=["cat", "dog"], val=["cat"]), "val/ lacks the class folder(s) 'dog'"),
    (lambda r: _classes(r, train=["cat", "dog"], val=["cat", "dog", "eel"]), "val/ has class folder(s) 'eel'"),
    (lambda r: _classes(r, train=["cat", "dog"], val=[]) and None, "val/ lacks"),
    (lambda r: _classes(r, train=["cat", "dog"], val=["cat", "dog"], empty="val/dog"), "val/dog/ holds no images"),
    (lambda r: (r / "train" / "a").mkdir(parents=True), "no val/ folder"),
])
def test_a_folder_that_breaks_the_layout_is_refused_saying_what_is_wrong_where(tmp_path, make, says):
    root = tmp_path / "folders" / "mine"
    root.mkdir(parents=True)
    make(root)
    with pytest.raises(folders.FolderError, match="folder:mine") as err:
        catalogue.dataset("folder:mine", tmp_path)
    assert says in str(err.value) and str(root) in str(err.value)
    with pytest.raises(DatasetError, match="folder:mine"):  # the engine's loader says the same
        datasets.load("folder:mine", tmp_path)


def _classes(root, train, val, empty=None):
    for split, names in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for c in names:
            (root / split / c).mkdir()
            if f"{split}/{c}" != empty:
                Image.new("RGB", (8, 8), (9, 9, 9)).save(root / split / c / "a.png")
    return True


def test_a_missing_folder_says_where_it_looked_and_the_layout(tmp_path):
    with pytest.raises(folders.FolderError) as err:
        catalogue.dataset("folder:absent", tmp_path)
    assert str(tmp_path / "folders" / "absent") in str(err.value) and "train/<class>" in str(err.value)


@pytest.mark.parametrize("name", ["../etc", "a/b", "..", ".hidden", "", "x" * 65, "<img src=x>"])
def test_a_folder_name_is_one_harmless_path_segment(tmp_path, name):
    with pytest.raises(folders.FolderError, match="a folder name is"):
        folders.scan("folder:" + name, tmp_path)


def test_links_out_of_the_data_folder_are_never_followed(tmp_path):
    data = tmp_path / "data"
    outside = tmp_path / "outside"
    write_folder(outside, "stolen", train=2, val=2, broken=False)
    (data / "folders").mkdir(parents=True)
    os.symlink(outside / "folders" / "stolen", data / "folders" / "linked")
    with pytest.raises(folders.FolderError, match="links outside the data folder"):
        folders.scan("folder:linked", data)
    # Inside a real folder: a file and a class folder that link out are skipped, listed, never read.
    root = write_folder(data, "mine", train=3, val=2, broken=False)
    secret = outside / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(secret)
    os.symlink(secret, root / "train" / "red" / "zz-link.png")
    os.symlink(outside / "folders" / "stolen" / "train", root / "train" / "linked-class")
    f = folders.scan("folder:mine", data)
    skipped = dict(f.skipped)
    assert skipped["train/red/zz-link.png"] == "links outside the folder"
    assert skipped["train/linked-class"] == "links outside the folder"
    assert all("zz-link" not in rel for rel, _ in f.train) and "linked-class" not in f.classes
    # A listed image swapped for a link after the scan is refused at read time too.
    victim = root / "val" / "red" / "000.jpg"
    victim.unlink()
    os.symlink(secret, victim)
    with pytest.raises(folders.FolderError, match="leads outside"):
        folders.resolve(f, "val/red/000.jpg")
    with pytest.raises(DatasetError):
        datasets.val_image("folder:mine", data, "val/red/000.jpg")


def test_a_thumbnail_is_only_ever_an_image_the_folder_lists(tmp_path):
    write_folder(tmp_path, "mine", train=2, val=2, broken=False)
    (tmp_path / "secret.png").write_bytes(datasets.png(np.zeros((3, 4, 4), np.uint8)))
    for bad in ("../../secret.png", "val/../../../secret.png", "/etc/passwd", 3, "train/red/000.jpg"):
        with pytest.raises(DatasetError, match="not a validation image"):
            datasets.val_image("folder:mine", tmp_path, bad)
    img = datasets.val_image("folder:mine", tmp_path, "val/red/000.jpg")
    assert img.shape == (3, datasets.THUMBNAIL_PX, datasets.THUMBNAIL_PX)


def test_a_class_folder_named_like_html_is_a_class_like_any_other(tmp_path):
    evil = "<img src=x onerror=alert(1)>"
    write_folder(tmp_path, "evil", train=2, val=1, classes=("red", evil), broken=False)
    spec = catalogue.dataset("folder:evil", tmp_path)
    assert spec.classes == (evil, "red")  # sorted: "<" before "r"
    ds = datasets.load("folder:evil", tmp_path, image_size=16)
    assert len(ds.train) == 4


def test_a_50_megapixel_jpeg_is_read_at_a_reduced_scale_and_a_bomb_is_refused_unread(tmp_path):
    big = tmp_path / "big.jpg"
    Image.new("RGB", (8660, 5774), (200, 30, 30)).save(big, quality=60)  # 50.0 MP
    t0 = time.perf_counter()
    img = datasets.read_image(big, 64)
    assert img.shape == (3, 64, 64) and img[0].mean() > 150
    assert time.perf_counter() - t0 < 5  # PIL's draft decodes it at 1/8 scale
    # PNGs that declare 100 and 10,000 megapixels in a few bytes: refused before a pixel is allocated (the second
    # by PIL's own guard at open, the first by the lab's limit, below PIL's).
    for side, says in ((10_000, "more than the 64 megapixels"), (100_000, "decompression bomb")):
        bomb = tmp_path / f"bomb{side}.png"
        bomb.write_bytes(_png_header(side, side))
        with pytest.raises(datasets.UnreadableImage, match=says):
            datasets.read_image(bomb, 64)


def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_a_truncated_png_and_a_text_file_are_unreadable_images_not_crashes(tmp_path):
    good = tmp_path / "ok.png"
    Image.new("RGB", (50, 50), (1, 2, 3)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "text.jpg"
    text.write_text("hello")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    for f in (cut, text, empty):
        with pytest.raises(datasets.UnreadableImage):
            datasets.read_image(f, 16)


def test_ten_thousand_tiny_files_load_with_a_count_and_a_short_list(tmp_path):
    root = tmp_path / "folders" / "tiny"
    tiny = datasets.png(np.full((3, 1, 1), 128, np.uint8))
    for split, n in (("train", 4000), ("val", 1000)):
        for c in ("a", "b"):
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"{i:05d}.png").write_bytes(tiny if i % 100 else b"x")  # every 100th is broken
    seen = []
    ds = datasets.load("folder:tiny", tmp_path, image_size=8, on_read=lambda done, total: seen.append(done))
    assert len(ds.train) + len(ds.val) == 10_000 - 100
    assert len(ds.skipped) == 100 and datasets.skipped_summary(ds)["count"] == 100
    assert len(datasets.skipped_summary(ds)["files"]) == folders.SHOWN  # the list is short, the count complete
    assert seen[-1] == 10_000 and len(seen) < 200  # reported in steps, not per file


def test_the_catalogue_declares_the_set_sizes_once():
    c10 = catalogue.DATASETS["cifar10"]
    assert (c10.train_size, c10.val_size) == (50_000, 10_000)
    from core.config import OPTIONS_BY_NAME
    assert OPTIONS_BY_NAME["train_per_class"].le == 5_000 and OPTIONS_BY_NAME["val_limit"].le == 10_000
    from core import estimate
    assert estimate.image_counts({"dataset": "cifar100"}) == (50_000, 10_000)


def test_the_plan_counts_a_folders_images(tmp_path, monkeypatch):
    write_folder(tmp_path, "shapes", train=7, val=4, broken=False)
    monkeypatch.setenv("BLOCKLAB_DATA_DIR", str(tmp_path))
    from core import estimate, settings
    settings.get_settings.cache_clear()
    try:
        assert estimate.image_counts({"dataset": "folder:shapes"}) == (21, 12)
        assert estimate.image_counts({"dataset": "folder:shapes", "train_per_class": 2, "val_limit": 5}) == (6, 5)
        from core.config import TrainConfig, method_card
        card = method_card(TrainConfig(dataset="folder:shapes", model="deit_tiny_patch16_224"))
        assert card["paper_val_acc"] is None and not card["in_paper"] and card["num_classes"] == 3
        assert "no paper number" in dict((r["label"], r["value"]) for r in card["rows"])["Dataset"]
    finally:
        settings.get_settings.cache_clear()


def test_names_a_json_answer_cannot_carry_and_unreadable_folders_are_answered(tmp_path, monkeypatch):
    root = write_folder(tmp_path, "mine", train=2, val=1, broken=False)
    bad = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    (root / "train" / "red" / bad).write_bytes((root / "train" / "red" / "000.jpg").read_bytes())
    f = folders.scan("folder:mine", tmp_path)
    assert ("train/red/caf?.png", "name is not UTF-8") in f.skipped
    import json
    json.dumps([rel for rel, _ in f.train], ensure_ascii=False).encode("utf-8")  # every listed id encodes
    # A class folder the lab may not read (as root every mode is readable: the refusal is made here).
    real = os.scandir

    def refusing(path):
        if str(path).endswith("val/red"):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(folders.os, "scandir", refusing)
    with pytest.raises(folders.FolderError, match=r"cannot read .*val/red \(Permission denied\)"):
        folders.scan("folder:mine", tmp_path)
    with pytest.raises(DatasetError, match="cannot read"):
        datasets.load("folder:mine", tmp_path)
