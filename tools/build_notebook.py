"""Writes notebooks/blocklab.ipynb from the cells below (the notebook's one source: edit here, run this, commit
both; tests/notebook/test_notebook.py checks the two agree and executes the notebook)."""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

OUT = Path(__file__).resolve().parents[1] / "notebooks" / "blocklab.ipynb"
REPO = "https://github.com/blocklab/blocklab"

CELLS = [
    ("md", f"""# BlockLab in a notebook: single-block fine-tuning on a free GPU

Malpure, Litake and Ingle (2021) fine-tune ImageNet-pretrained CNNs and vision transformers on CIFAR-10 by
freezing everything but the **last block**, adding a small MLP head. This notebook runs the paper's method in
Colab or Kaggle (one T4 is enough for the paper preset of DeiT-B distilled and of the paper's CNNs):

1. installs BlockLab from its repository (the platform already has PyTorch and torchvision),
2. gets CIFAR-10 (downloaded from its official mirror with its md5 checked, or Kaggle's dataset input),
3. starts the lab (backend and one worker, embedded defaults) in the background and shows its web UI here,
4. or trains from a cell: `run(...)` draws live curves against the paper's and ends with a table against Table 1.
   Interrupting the cell stops at a checkpoint; running it again resumes.

Runtime → Change runtime type → **T4 GPU** first (Colab), or Settings → Accelerator → GPU T4 (Kaggle).
Source: {REPO}"""),
    ("code", """# Parameters (a notebook runner may set these: the repository's test runs the notebook on tiny settings).
REPO = "%s"  # where BlockLab is installed from on Colab and Kaggle
HOME = "blocklab-home"  # the lab's state: database, runs, data, weights, frozen-feature caches
MODEL = "deit_base_distilled_patch16_224"  # the paper's DeiT-B distilled; e.g. "densenet201" for a paper CNN
RUN_OPTIONS = {}  # options over the paper preset, e.g. {"epochs": 5, "precision": "fp16"}; {} = the paper's method
DATA_DIR = None  # a folder that holds cifar-10-batches-py/ (None: <HOME>/data, downloaded with its md5 checked)
START_LAB = True  # start the web lab in the background (False: train from the cells only)
PLAN_MODELS = None  # models to plan in the plan cell (None: MODEL)""" % REPO, {"tags": ["parameters"]}),
    ("md", "## 1. Install"),
    ("code", """import os, sys, subprocess
from pathlib import Path

PLATFORM = "colab" if "google.colab" in sys.modules else "kaggle" if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") else "local"
if PLATFORM in ("colab", "kaggle"):
    # A checkout, installed editable: the lab serves its web app from the checkout's frontend/. The [worker]
    # extra holds floors only (docs/platforms.md): the platform's torch, built for its GPU driver, meets them and
    # is kept. (Kaggle: turn Internet on in the notebook's settings first.)
    CHECKOUT = Path("blocklab")
    if not CHECKOUT.exists():  # no credentials prompt: a wrong REPO fails at once
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", "main", REPO, str(CHECKOUT)], check=True,
                       env={**os.environ, "GIT_TERMINAL_PROMPT": "0"})
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{CHECKOUT}[worker]"], check=True)
    sys.path.insert(0, str(CHECKOUT.resolve()))  # this kernel started before the install
elif Path("../backend").is_dir() and "backend" not in sys.modules:
    sys.path.insert(0, str(Path("..").resolve()))  # a local Jupyter opened in notebooks/ of a checkout
os.environ["BLOCKLAB_HOME"] = str(Path(HOME).resolve())  # the lab and run() below share data, weights, caches
if PLATFORM == "kaggle":  # /kaggle/working keeps only ~20 GB of output: frozen-feature caches go to scratch disk
    os.environ.setdefault("BLOCKLAB_CACHE_DIR", "/tmp/blocklab-cache")
import torch
print(f"{PLATFORM}: torch {torch.__version__}, " + (f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU (CPU only: slow)"))"""),
    ("md", """## 2. CIFAR-10

On Kaggle, add the dataset *cifar10-python* as an input (it holds the official `cifar-10-batches-py/`) and it is
used as it is; elsewhere the official archive is downloaded once (163 MB) and its md5 checked."""),
    ("code", """from worker.engine import data as cifar

def find_cifar10() -> Path:
    if DATA_DIR:
        return Path(DATA_DIR)
    if PLATFORM == "kaggle":
        for hit in Path("/kaggle/input").glob("**/cifar-10-batches-py/test_batch"):
            return hit.parent.parent
    here = Path(HOME, "data")
    if not cifar.present(here):
        cifar.download(here)  # md5-checked; a failed or corrupt download keeps nothing
    return here

DATA = find_cifar10()
os.environ["BLOCKLAB_DATA_DIR"] = str(DATA.resolve())
print("CIFAR-10 in", DATA)"""),
    ("md", """## 3. The lab, in the background

The backend and one worker (the GPU's), on embedded defaults (SQLite, no Redis). On Colab the page appears
below through Colab's port proxy (and as a link for a tab of its own); Kaggle has no port proxy, so there use the
cells of section 4. The lab keeps running while this notebook is open; the last cell stops it."""),
    ("code", """from backend.notebook_lab import NotebookLab

lab = None
if START_LAB:
    lab = NotebookLab(HOME, port=8000).start()
    print("the lab answers on", lab.url, "(log:", lab.log, ")")
    lab.show(height=800)"""),
    ("md", """### What the paper preset costs here

The lab's plan: the estimated time on this machine's worker and on a free T4, in fp32 (the paper's numerics) and
in fp16, and where the frozen features go (GPU memory, RAM, or a memory-mapped file on disk when RAM is short:
DeiT-B's 31 GB cache on Colab's 12 GB). Reading that file back every epoch is part of the T4's time: at an assumed
disk rate (so the time is a range) until a job on this worker has measured its own; the plan then uses that. A
refused plan prints the lab's reason (an option it cannot take is named)."""),
    ("code", """import json, urllib.error, urllib.request

def plan(models, options=None):
    \"\"\"The lab's plan of `models` with `options` (default RUN_OPTIONS); None, with the lab's reason printed, when
    the lab refuses it.\"\"\"
    options = RUN_OPTIONS if options is None else options
    configs = options if isinstance(options, list) else [options]
    body = json.dumps({"configs": [{"model": m, **o} for m in models for o in configs]}).encode()
    req = urllib.request.Request(lab.url + "/api/plan", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        print(f"the lab refused the plan (HTTP {e.code}): {refusal(e)}")
        return None

def refusal(e) -> str:
    \"\"\"The server's reason in an HTTP error: each option it cannot take with why, or its message.\"\"\"
    text = e.read().decode(errors="replace")
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        return text.strip() or str(e.reason)
    if isinstance(detail, list):  # one entry per bad field: its place in the request and the reason
        return "; ".join(".".join(str(p) for p in d.get("loc", [])[1:]) + ": " + str(d.get("msg")) for d in detail)
    return str(detail or e.reason)

def minutes(s) -> str:
    return "not measured yet" if s is None else f"{s / 60:.1f} min"

def t4_time(t4) -> str:
    \"\"\"A free T4's time; a range where the disk's read rate is assumed.\"\"\"
    rate = f"{(t4.get('disk_bytes_per_s') or 0) / 1e6:.0f} MB/s"
    if t4.get("seconds_range"):
        low, high = t4["seconds_range"]
        return f"{minutes(t4['seconds'])} ({low / 60:.0f}-{high / 60:.0f} min: disk reads at an assumed {rate})"
    if t4.get("disk_read") == "measured":
        return f"{minutes(t4['seconds'])} (disk reads at {rate}, measured by this worker)"
    return minutes(t4["seconds"])

if lab is not None:
    worker = lab.wait_for_worker()  # its first report: device, measured speed, weights and data present
    print("worker:", worker["device"], f"({worker['gflops']} GFLOP/s measured)")
    models = PLAN_MODELS or [MODEL]
    planned = plan(models)
    both = plan(models, [{**RUN_OPTIONS, "precision": p} for p in ("fp32", "fp16")])
    if planned and both:
        print("free T4 times: estimated from", planned["t4"]["source"])
        for item, fp32, fp16 in zip(planned["items"], both["items"][::2], both["items"][1::2]):
            est, mem = item["estimate"], item.get("memory") or {}
            print(f"{item['model']}: " + ("blocked: " + item["block_reason"] if item["blocked"] else "ready"))
            print(f"  expected on this worker: {minutes(est.get('this_device_s'))}")
            bf16 = item.get("bf16")  # this worker runs bf16 natively: the same run in bf16, a named deviation
            if bf16:
                acc = bf16["accuracy"]
                effect = (f"{100 * acc['effect']:+.2f} points measured here ({acc['basis']})" if acc["basis"]
                          else "not measured in this lab yet")
                when = (minutes(bf16["this_device_s"]) if not bf16["range_s"] else
                        f"{minutes(bf16['range_s'][0])} to {minutes(bf16['range_s'][1])}")
                about = "" if bf16["speedup_measured"] else "about "
                print(f"  in bf16 on this worker: {when} ({about}{bf16['speedup']}x the fp32 speed); "
                      f"a deviation: {bf16['deviation']['text']}; effect on best validation accuracy: {effect}")
            print(f"  expected on a free T4: fp32 {t4_time(fp32['estimate']['t4'])}; "
                  f"fp16 {t4_time(fp16['estimate']['t4'])}")
            for where, line in (("here", mem.get("this_worker")), ("on a free T4", mem.get("t4"))):
                if line:
                    print(f"  features {where}: {line['label']}: {line['reason']}")"""),
    ("md", """### fp32 or fp16 on a T4

The paper trained in fp32, and so does this notebook unless told otherwise (`RUN_OPTIONS = {}`). A T4 has no TF32
and no bf16 of its own (bf16 is emulated there, slower than fp32), but its tensor cores run fp16 at 65 TFLOP/s
against 8.1 TFLOP/s in fp32: the plan above gives both times. Set `RUN_OPTIONS = {"precision": "fp16"}` when the
fp32 time is longer than you can keep the session open, or to compare many models in one session; keep fp32 to
reproduce the paper's method. What fp16 changes against the paper: the frozen part and the trainable block run
under float16 autocast (matmuls and convolutions in half precision; norms, softmax and the loss in fp32), and the
training step uses a dynamic gradient scaler so that small gradients do not round to zero. Its results are not the
paper's numerics: the table at the end of `run()` lists fp16 among the differences from the paper. (The frozen
features are cached in float16 either way: `cache_dtype`.)"""),
    ("md", """## 4. Or train from a cell

`run()` takes the lab's options (the same schema as the web form, the API and the CLI) over the paper preset,
trains in this kernel and draws the curves as they come, with the paper's curve and its Table 1 value. Stop the
cell to stop at a checkpoint; run it again to resume. Do not train here while the lab's worker trains: they share
the one GPU. `run_options()` lists every option."""),
    ("code", """from worker.notebook import run, options as run_options

result = run(MODEL, data_dir=DATA, **RUN_OPTIONS)  # ends with the run against Table 1 (result.table())"""),
    ("md", "## 5. Stop the lab"),
    ("code", """if lab is not None:
    print("the lab stopped, exit code", lab.stop())"""),
]


def build() -> nbformat.NotebookNode:
    nb = new_notebook()
    for kind, source, *meta in CELLS:
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        if meta:
            cell.metadata.update(meta[0])
        nb.cells.append(cell)
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}, "accelerator": "GPU",
                        "colab": {"provenance": [], "gpuType": "T4"}})
    # Stable cell ids: the committed file and a rebuild agree byte for byte.
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i:02d}"
    return nb


def render() -> str:
    return nbformat.writes(build()) + "\n"


if __name__ == "__main__":
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
