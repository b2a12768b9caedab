"""One way to assemble a run (worker/engine/assembly.py): weights=local is the same file for the command line,
the notebook's run() and the Celery task, a setup problem carries its fix as data and each front end says it in
its own terms, and the reproduction report's "Run it again" command runs as printed."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import pytest
import timm
from safetensors.torch import save_file

from core.settings import get_settings
from tests.conftest import ROOT
from worker import finetune, notebook
from worker.engine import Paths, SetupError, WeightsError, assemble
from worker.queue.tasks import job_error_text

MODEL = "deit_tiny_patch16_224"
TINY = dict(model=MODEL, epochs=1, batch_size=16, image_size=32, train_per_class=2, val_limit=20)


@pytest.fixture
def home(tmp_path, monkeypatch, tiny_cifar_dir):
    """A lab home whose settings name the tiny data; its weights folder starts empty."""
    monkeypatch.setenv("BLOCKLAB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BLOCKLAB_DATA_DIR", str(tiny_cifar_dir))
    monkeypatch.delenv("BLOCKLAB_WEIGHTS_DIR", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _put_weights(folder):
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in timm.create_model(MODEL, pretrained=False).state_dict().items()}
    save_file(sd, str(folder / f"{MODEL}.safetensors"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_a_missing_local_file_says_the_same_fix_in_each_front_ends_terms(home, tmp_path, tiny_cifar_dir):
    wdir = home.weights_path
    with pytest.raises(WeightsError) as e:  # the engine's one entry, before anything is built
        assemble(finetune.preset("quick", **TINY, weights="local"), Paths(tiny_cifar_dir, tmp_path / "o"))
    fix = e.value.fixes[0]
    assert (fix.file, fix.folder, fix.path) == (f"{MODEL}.safetensors (or {MODEL}.pth)", "weights_dir", wdir)
    # The command line: no --weights-dir given, it looks in the lab's folder (BLOCKLAB_HOME) and names the flag.
    cli = subprocess.run([sys.executable, "-m", "worker.finetune", "--preset", "quick", "--model", MODEL,
                          "--weights", "local", "--data-dir", str(tiny_cifar_dir), "--out", str(tmp_path / "c")],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 2 and "file local not found" not in cli.stderr
    assert f"put {MODEL}.safetensors (or {MODEL}.pth) in {wdir} (--weights-dir)" in cli.stderr, cli.stderr
    assert "--weights hub" in cli.stderr
    # The notebook: keyword arguments.
    with pytest.raises(notebook.RunError) as nb:
        notebook.run(show=False, out=tmp_path / "n", weights="local", **TINY)
    assert f"in {wdir} (run(..., weights_dir=...))" in str(nb.value) and "weights='hub'" in str(nb.value)
    assert "--" not in str(nb.value)
    # The job page: the form's field and the worker's setting.
    web = job_error_text(e.value)
    assert f"in {wdir} (the worker's weights folder, BLOCKLAB_WEIGHTS_DIR)" in web and "choose weights: hub" in web
    assert "--" not in web and web.endswith("then resume the job.")


def test_weights_local_is_the_same_file_on_the_command_line_and_in_run(home, tmp_path, tiny_cifar_dir):
    _put_weights(home.weights_path)
    r = notebook.run(show=False, out=tmp_path / "n", weights="local", **TINY)
    assert r.status == "succeeded" and r.config.weights == "local"
    code = finetune.main(["--preset", "quick", "--weights", "local", "--data-dir", str(tiny_cifar_dir), "--json",
                          "--out", str(tmp_path / "c"), *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]])
    assert code == 0
    # Another folder given is the folder looked in.
    other = tmp_path / "mine"
    with pytest.raises(notebook.RunError, match=str(other)):
        notebook.run(show=False, out=tmp_path / "n2", weights="local", weights_dir=other, **TINY)


def test_a_checkpoint_of_another_config_is_a_setup_error_naming_the_folder_option(home, tmp_path, tiny_cifar_dir):
    out = tmp_path / "o"
    assert finetune.main(["--preset", "quick", "--weights", "none", "--data-dir", str(tiny_cifar_dir), "--json",
                          "--out", str(out), *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]]) == 0
    with pytest.raises(SetupError) as e:
        assemble(finetune.preset("quick", **{**TINY, "lr": 0.5}, weights="none"), Paths(tiny_cifar_dir, out))
    assert "another folder (--out)" in e.value.phrase(finetune.FLAGS)


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_reports_run_it_again_command_runs_as_printed(home, tmp_path):
    """backend/app/reproduction_report.py prints the command; executed by a shell exactly as printed (the lab's data and
    weights folders in it), it trains the same config with weights=local."""
    from backend.app.reproduction_report import cli_command
    _put_weights(home.weights_path)
    config = finetune.preset("paper", **TINY, weights="local").to_dict()
    cmd = cli_command(config, str(tmp_path / "again"))
    assert "--weights local" in cmd and "DATA_DIR" not in cmd
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr
    assert shlex.split(cmd)[:3] == ["python", "-m", "worker.finetune"]
    assert (tmp_path / "again" / "summary.json").is_file()
