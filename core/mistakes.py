"""A run's validation predictions and the gallery of its mistakes: the file format, declared once.

The engine keeps, with the run's files, what the model predicted for every validation image (its class and
confidence, one row per image) at three epochs: the first (to say whether an image was already right then), the
best and the latest. The lab's API pages through the mistakes (`GET /api/jobs/{id}/mistakes`), the command line
and the notebook write them as one self-contained HTML file (`gallery_html`). No image is copied into the run's
folder: each row names its image by its id in the dataset (CIFAR: the index in the test set; a folder: the path
inside it), and the thumbnails are read back through the dataset's own loader (core/datasets.py).

Torch-free and numpy-free: the backend imports it; only `gallery_html` reaches the image loader, lazily.
"""
from __future__ import annotations

import base64
import html
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FOLDER = "predictions"  # inside a run's folder
EPOCHS = ("first", "best", "latest")  # the kept epochs; the API's `epoch` takes "best" or "latest"
SHOWN = ("best", "latest")
PER_PAGE = 48
MAX_PER_PAGE = 200
HTML_MAX_IMAGES = 600  # a self-contained file stays a few MB; the page says how many it leaves out


def path(out_dir: Path, which: str) -> Path:
    return Path(out_dir) / FOLDER / f"{which}.json"


def write(out_dir: Path, which: str, epoch: int, dataset: str, classes: list[str], ids: list, labels: list[int],
          pred: list[int], conf: list[float]) -> None:
    """One kept epoch, written whole or not at all (a reader never sees half a file)."""
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"epoch": epoch, "dataset": dataset, "classes": list(classes), "ids": list(ids), "labels": list(labels),
           "pred": list(pred), "conf": [round(float(c), 4) for c in conf]}
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
        os.replace(tmp, path(out_dir, which))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def keep_as(out_dir: Path, src: str, dst: str) -> None:
    """The epoch kept as `src` is also the `dst` one (the latest epoch became the best)."""
    data = path(out_dir, src).read_bytes()
    fd, tmp = tempfile.mkstemp(dir=path(out_dir, src).parent, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path(out_dir, dst))


def read(out_dir: Path, which: str) -> dict | None:
    try:
        doc = json.loads(path(out_dir, which).read_text())
    except (OSError, ValueError):
        return None
    n = len(doc.get("ids", []))
    if not all(len(doc.get(k, [])) == n for k in ("labels", "pred", "conf")):
        return None
    return doc


class NoPredictions(LookupError):
    """The run has kept no predictions for that epoch (yet): the message says why, in the lab's terms."""


def _class_index(classes: list[str], value: str | int | None, what: str) -> int | None:
    """A class given by name or by its index, or None for any."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    try:
        i = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: no class {value!r}; the classes are {', '.join(classes[:20])}"
                         f"{' …' if len(classes) > 20 else ''} (or their index 0..{len(classes) - 1})") from None
    if not 0 <= i < len(classes):
        raise ValueError(f"{what}: class index {i} is outside 0..{len(classes) - 1}")
    return i


def mistakes(out_dir: Path, epoch: str = "best", true: str | int | None = None, pred: str | int | None = None,
             page: int = 1, per_page: int = PER_PAGE) -> dict[str, Any]:
    """The misclassified validation images of a kept epoch, filtered by true and predicted class, most confident
    mistakes first, one page of them. Each item names its row (the thumbnail's address), its image id, the true
    and predicted class with the confidence, and whether the first epoch had it right (None where unknown).
    ValueError for a bad filter (the message names it), NoPredictions where nothing was kept."""
    if epoch not in SHOWN:
        raise ValueError(f"epoch: must be one of {', '.join(SHOWN)}")
    doc = read(out_dir, epoch)
    if doc is None:
        raise NoPredictions(f"no validation predictions kept for the {epoch} epoch: they are written after each "
                            "epoch's validation (runs from before this lab kept them have none)")
    classes = doc["classes"]
    t, p = _class_index(classes, true, "true"), _class_index(classes, pred, "pred")
    first = read(out_dir, "first")
    first_right = ([a == b for a, b in zip(first["labels"], first["pred"])]
                   if first and first["ids"] == doc["ids"] else None)
    rows = [i for i, (y, q) in enumerate(zip(doc["labels"], doc["pred"]))
            if y != q and (t is None or y == t) and (p is None or q == p)]
    rows.sort(key=lambda i: -doc["conf"][i])
    total = len(rows)
    start = (page - 1) * per_page
    items = [{"row": i, "id": doc["ids"][i], "true": classes[doc["labels"][i]], "true_index": doc["labels"][i],
              "pred": classes[doc["pred"][i]], "pred_index": doc["pred"][i], "confidence": doc["conf"][i],
              "right_at_epoch_1": None if first_right is None else first_right[i]}
             for i in rows[start:start + per_page]]
    errors = sum(1 for y, q in zip(doc["labels"], doc["pred"]) if y != q)
    return {"epoch": doc["epoch"], "kept_as": epoch, "dataset": doc["dataset"], "classes": classes,
            "true": None if t is None else classes[t], "pred": None if p is None else classes[p],
            "total": total, "page": page, "per_page": per_page, "pages": max(1, -(-total // per_page)),
            "mistakes_all": errors, "images": len(doc["ids"]), "first_epoch": first["epoch"] if first else None,
            "items": items}


def image_id(out_dir: Path, row: int, epoch: str = "best") -> tuple[str, Any]:
    """The dataset and image id of a row of the kept predictions (the thumbnail's address names the row, never a
    path). LookupError where there is no such row."""
    doc = read(out_dir, epoch) or read(out_dir, "latest")
    if doc is None:
        raise NoPredictions("no validation predictions kept for this job")
    if not 0 <= row < len(doc["ids"]):
        raise LookupError(f"no validation image {row}: the job kept {len(doc['ids'])} (rows 0..{len(doc['ids']) - 1})")
    return doc["dataset"], doc["ids"][row]


def gallery_html(out_dir: Path, data_dir: Path, epoch: str = "best", title: str | None = None,
                 limit: int = HTML_MAX_IMAGES) -> str:
    """The mistakes of a kept epoch as one self-contained HTML page: the thumbnails inline (data: URLs), read
    through the dataset's loader; with a filter by true and predicted class that works without a server."""
    from . import datasets  # numpy and PIL: only where a page is written
    page = mistakes(out_dir, epoch, per_page=limit)
    cards = []
    for it in page["items"]:
        try:
            src = "data:image/png;base64," + base64.b64encode(
                datasets.png(datasets.val_image(page["dataset"], data_dir, it["id"]))).decode()
            img = f'<img alt="" src="{src}">'
        except datasets.DatasetError as e:
            img = f'<div class="missing">{html.escape(str(e))}</div>'
        first = {True: "right at epoch 1", False: "wrong at epoch 1", None: ""}[it["right_at_epoch_1"]]
        cards.append(
            f'<figure data-true="{html.escape(it["true"])}" data-pred="{html.escape(it["pred"])}">{img}'
            f'<figcaption><b>true</b> {html.escape(it["true"])}<br><b>predicted</b> {html.escape(it["pred"])} '
            f'({100 * it["confidence"]:.1f}%)<br><span class="first">{first}</span></figcaption></figure>')
    options = "".join(f'<option>{html.escape(c)}</option>' for c in page["classes"])
    more = (f'<p>Showing the {limit:,} most confident of {page["total"]:,} mistakes.</p>'
            if page["total"] > limit else "")
    heading = html.escape(title or f"Mistakes at the {epoch} epoch")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{heading}</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5em}}main{{display:flex;flex-wrap:wrap;gap:10px}}
figure{{margin:0;width:132px;font-size:12px}}figure img{{width:128px;height:128px;image-rendering:pixelated}}
.first{{color:#555}}.missing{{width:128px;height:128px;background:#eee;font-size:10px;overflow:hidden}}</style>
</head><body><h1>{heading}</h1>
<p>Epoch {page["epoch"]} ({epoch}): {page["mistakes_all"]:,} of {page["images"]:,} validation images misclassified;
most confident mistakes first.</p>{more}
<p><label>True class <select id="t"><option value="">any</option>{options}</select></label>
<label>Predicted <select id="p"><option value="">any</option>{options}</select></label> <span id="n"></span></p>
<main>{"".join(cards) or "<p>No mistakes.</p>"}</main>
<script>
const t=document.getElementById("t"),p=document.getElementById("p"),n=document.getElementById("n");
function f(){{let k=0;for(const e of document.querySelectorAll("figure")){{
const s=(!t.value||e.dataset.true===t.value)&&(!p.value||e.dataset.pred===p.value);e.hidden=!s;k+=s}}
n.textContent=k+" shown"}}
t.onchange=p.onchange=f;f();
</script></body></html>
"""


def write_gallery(out_dir: Path, data_dir: Path, file: Path, epoch: str = "best", title: str | None = None) -> Path:
    """The gallery of a run folder's mistakes as one self-contained HTML file (the command line's --gallery, the
    notebook's run(gallery=...)); NoPredictions where the run kept none."""
    text = gallery_html(out_dir, data_dir, epoch, title)
    file = Path(file)
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text, encoding="utf-8")
    return file
