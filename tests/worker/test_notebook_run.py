"""worker.notebook.run, the cells' entry point: the lab's options over a preset, a real SIGINT (the notebook's stop
button) stops the run at a checkpoint, and calling again resumes without recomputing a finished epoch."""
from __future__ import annotations

import json
import os
import signal

import pytest

from worker import notebook
from worker.engine import train as engine

TINY = dict(weights="none", batch_size=32, image_size=32, val_limit=60)


def _engine_epochs(monkeypatch, after_epoch=None) -> list[int]:
    """Epochs the engine trains in this process (its on_epoch calls); `after_epoch(epoch)` runs after each."""
    seen: list[int] = []
    real = engine.run

    def counting(cfg, paths, cb, *a, **kw):
        inner = cb.on_epoch

        def on_epoch(row):
            seen.append(row["epoch"])
            inner(row)
            if after_epoch:
                after_epoch(row["epoch"])
        cb.on_epoch = on_epoch
        return real(cfg, paths, cb, *a, **kw)
    monkeypatch.setattr(engine, "run", counting)
    return seen


def test_interrupting_stops_at_a_checkpoint_and_calling_again_resumes(tiny_cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("BLOCKLAB_HOME", str(tmp_path / "home"))
    from core.settings import get_settings
    get_settings.cache_clear()

    def interrupt(epoch):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGINT)  # what Jupyter's stop button sends the kernel
    first = _engine_epochs(monkeypatch, interrupt)
    r1 = notebook.run("deit_tiny_patch16_224", epochs=3, data_dir=tiny_cifar_dir, download=False, show=False, **TINY)
    assert r1.status == "stopped" and first == [1] and r1.summary["epochs_run"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the cell's handler was put back
    assert any(k == "Resume" for k, _ in r1.table())

    again = _engine_epochs(monkeypatch)
    r2 = notebook.run("deit_tiny_patch16_224", epochs=3, data_dir=tiny_cifar_dir, download=False, show=False, **TINY)
    assert r2.out == r1.out and r2.status == "succeeded"
    assert again == [2, 3]  # epoch 1 came from the checkpoint, not recomputed
    rows = [json.loads(line) for line in (r2.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and [r["epoch"] for r in r2.rows] == [1, 2, 3]

    done = _engine_epochs(monkeypatch)
    r3 = notebook.run("deit_tiny_patch16_224", epochs=3, data_dir=tiny_cifar_dir, download=False, show=False, **TINY)
    assert done == [] and r3.status == "complete"  # nothing left to train
    get_settings.cache_clear()


def test_options_are_the_labs_and_bad_ones_name_the_field():
    cfg = notebook.config(model="densenet201")
    assert cfg.batch_size == 512 and cfg.head_l2 == 0.01  # the paper preset with the model's own values
    with pytest.raises(ValueError, match="lr"):
        notebook.config(lr=-1)
    with pytest.raises(ValueError, match="unknown option.*learning_rate"):
        notebook.config(learning_rate=0.1)
    with pytest.raises(ValueError, match="precision"):
        notebook.config(precision="fp8")
    a, b = notebook.config(epochs=2), notebook.config(epochs=20)
    assert notebook.run_folder(a, notebook.Path("/r")) == notebook.run_folder(b, notebook.Path("/r"))
    assert notebook.run_folder(a, notebook.Path("/r")) != notebook.run_folder(notebook.config(lr=1e-3),
                                                                           notebook.Path("/r"))


def test_a_missing_dataset_says_where_it_looked_without_the_engines_stack(tmp_path):
    with pytest.raises(notebook.RunError, match=str(tmp_path / "none")) as err:
        notebook.run("deit_tiny_patch16_224", epochs=1, data_dir=tmp_path / "none", download=False, show=False,
                     out=tmp_path / "o", **TINY)
    assert err.value.__suppress_context__


def test_the_summary_names_every_difference_from_the_papers_method(tiny_cifar_dir, tmp_path):
    r = notebook.run("deit_tiny_patch16_224", epochs=1, data_dir=tiny_cifar_dir, download=False, show=False,
                     out=tmp_path / "o", **TINY)
    table = dict(r.table())
    assert table["Table 1"] == "no number for this model and dataset"
    paper = notebook.differences(notebook.config(model="deit_base_distilled_patch16_224", epochs=3))
    assert any(d.startswith("Epochs: 3 (the paper: 20)") for d in paper), paper
    assert "<table>" in r._repr_html_() and "Differences from the paper" in r._repr_html_()
