"""notebooks/blocklab.ipynb executes end to end under a notebook runner (nbclient, a real IPython kernel), on the
CPU with tiny settings injected after its parameters cell as papermill does: the platform cells (pip install, Colab's
proxy, Kaggle's input) are guarded and skipped here; the lab starts in the background, answers, shows its page,
plans, and stops; the cell entry point trains, draws its Plotly chart and ends with the table against Table 1."""
from __future__ import annotations

import json
import os
import re
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import build_notebook  # noqa: E402

NOTEBOOK = ROOT / "notebooks" / "blocklab.ipynb"
TINY = {"weights": "none", "batch_size": 32, "image_size": 32, "val_limit": 60, "epochs": 2}
LAB_START_S = 180  # NotebookLab.start's own default: the first start migrates a fresh database


def test_the_committed_notebook_is_what_its_builder_writes():
    assert NOTEBOOK.read_text() == build_notebook.render(), "run: python tools/build_notebook.py"


def _parameterised(home, data_dir) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    injected = (f"HOME = {str(home)!r}\nDATA_DIR = {str(data_dir)!r}\nMODEL = 'deit_tiny_patch16_224'\n"
                f"RUN_OPTIONS = {TINY!r}\nPLAN_MODELS = ['deit_tiny_patch16_224', 'densenet201']\n")
    cell = nbformat.v4.new_code_cell(injected)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, cell)
    # After the plan cell, what a student may type next: an option the lab refuses, and the paper preset of DeiT-B
    # (its features go to disk on a T4: the T4's time is a range while the disk's read rate is assumed).
    after = next(i for i, c in enumerate(nb.cells) if "def plan(models" in c.source)
    nb.cells.insert(after + 1, nbformat.v4.new_code_cell(
        'plan([MODEL], {"epochs": 0})\n'
        'print("deit_base on a free T4:", t4_time(plan(["deit_base_distilled_patch16_224"], {})["items"][0]'
        '["estimate"]["t4"]))'))
    return nb


def _outputs(cell, kind: str) -> str:
    text = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            text.append(out.get("text", ""))
        for mime, value in out.get("data", {}).items():
            if mime == kind or kind == "any":
                text.append(value if isinstance(value, str) else json.dumps(value))
    return "".join(text)


def _cell(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


@pytest.mark.system
def test_the_notebook_runs_end_to_end_on_the_cpu(tmp_path, tiny_cifar_dir, monkeypatch):
    for k in [k for k in os.environ if k.startswith("BLOCKLAB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    home = tmp_path / "home"
    nb = _parameterised(home, tiny_cifar_dir)
    NotebookClient(nb, timeout=LAB_START_S + 600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    install = _outputs(_cell(nb, "PLATFORM ="), "any")
    assert install.startswith("local: torch"), install  # the platform cells were skipped, torch imported
    assert "CIFAR-10 in " + str(tiny_cifar_dir) in _outputs(_cell(nb, "find_cifar10()"), "any")

    lab = _cell(nb, "NotebookLab(HOME")
    assert "the lab answers on http://127.0.0.1:" in _outputs(lab, "text/plain") + _outputs(lab, "any")
    assert "<iframe" in _outputs(lab, "text/html")  # the page, shown in the cell (a local Jupyter: no proxy)

    planned = _outputs(_cell(nb, "def plan(models"), "any")
    assert "deit_tiny_patch16_224: ready" in planned and "densenet201:" in planned, planned
    assert "expected on a free T4: fp32 " in planned and " min; fp16 " in planned, planned  # both precisions
    assert "features here: " in planned and "features on a free T4: " in planned, planned
    # Where this CPU runs bf16 natively the plan gives the bf16 time beside fp32, a named deviation; else not.
    import torch

    from worker.engine import bf16_supported
    native = bf16_supported(torch.device("cpu"))
    assert ("in bf16 on this worker: " in planned) == native, planned
    assert not native or "a deviation: bf16 autocast (a speed option; the paper trained in fp32)" in planned, planned
    typed = _outputs(_cell(nb, 'plan([MODEL], {"epochs": 0})'), "any")
    assert "the lab refused the plan (HTTP 422): configs.0.epochs: " in typed, typed  # the server's reason
    assert "HTTP Error" not in typed and "Traceback" not in typed, typed
    assert re.search(r"deit_base on a free T4: [\d.]+ min \(\d+-\d+ min: disk reads at an assumed 200 MB/s\)",
                     typed), typed

    trained = _cell(nb, "result = run(MODEL")
    figures = [o["data"]["application/vnd.plotly.v1+json"] for o in trained.outputs
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    fig = figures[-1]  # the chart as the last epoch redrew it
    names = [t.get("name") for t in fig["data"]]
    assert "validation accuracy" in names and "training loss" in names, names
    val = next(t for t in fig["data"] if t["name"] == "validation accuracy")
    assert val["x"] == [1, 2] and all(0 <= y <= 1 for y in val["y"])  # both epochs drawn (the last update)
    table = _outputs(trained, "text/html")
    assert "Best validation accuracy" in table and "Table 1" in table and "Differences from the paper" in table
    assert "Image size: 32" in table  # a deviation is named on the screen where the number is

    rows = [json.loads(line) for p in (home / "notebook").glob("*/metrics.jsonl") for line in p.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    stopped = _outputs(_cell(nb, "lab.stop()"), "any")
    assert "the lab stopped, exit code 0" in stopped, stopped
