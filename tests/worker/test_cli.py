"""The command line through its real entry point (`python -m worker.finetune`) on tiny data: help for every flag,
one bar per phase with nothing written into a bar, a readable end, `--json` for machines, and a rerun into an
existing --out that says whether it resumes or is already complete."""
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT
from worker.finetune import build_parser

ARGS = ["--model", "deit_tiny_patch16_224", "--batch-size", "64", "--weights", "none", "--image-size", "32",
        "--val-limit", "40", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "120"}
RUN_S = 300  # a tiny run, with the interpreter's start, on two shared cores


def _cli(*args, data, out, **kw):
    return subprocess.run([sys.executable, "-m", "worker.finetune", *ARGS, "--data-dir", str(data), "--out",
                           str(out), *args], capture_output=True, text=True, timeout=RUN_S, cwd=ROOT, env=ENV, check=False, **kw)


def _segments(stderr: str) -> list[str]:
    """What a terminal shows line by line: tqdm redraws with carriage returns."""
    return [s for s in re.split(r"[\r\n]", stderr) if s.strip()]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_every_flag_has_help_text_and_says_its_default():
    for action in build_parser()._actions:
        if action.dest == "help":
            continue
        assert action.help and "default" in action.help, action.option_strings


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_run_shows_bars_per_phase_epoch_lines_and_a_readable_summary(tiny_cifar_dir, tmp_path):
    r = _cli("--epochs", "2", data=tiny_cifar_dir, out=tmp_path / "o")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the person's view is on stderr; stdout stays for --json
    seg = _segments(r.stderr)
    for phase in ("loading data", "epoch 1 frozen features (train)", "epoch 1 frozen features (val)",
                  "epoch 1 training", "epoch 1 validating", "epoch 2 training"):
        assert any(s.startswith(phase) for s in seg), (phase, seg)
    # Epoch lines and the summary each start a line of their own: never written into a bar.
    for n in (1, 2):
        lines = [s for s in seg if f"epoch {n}/2:" in s]
        assert len(lines) == 1 and lines[0].startswith(f"epoch {n}/2: train loss"), lines
    assert "{" not in r.stderr and "INFO" not in r.stderr  # no raw JSON rows, no log lines
    tail = r.stderr.splitlines()[-4:]
    assert tail[0].startswith("deit_tiny_patch16_224: finished, 2 of 2 epochs in ")
    best = max(x["val_acc"] for x in _rows(tmp_path / "o"))
    assert tail[1].startswith(f"best validation accuracy {best:.4f} at epoch ")
    assert "trained 497,226 of" in tail[2] and tail[3].startswith("results: ")


def test_the_paper_accuracy_is_set_against_the_best_epoch():
    from worker.finetune import summary_text
    text = summary_text({"model": "vgg19", "status": "succeeded", "epochs_run": 20, "epochs": 20, "seconds": 3725,
                         "images_per_s": 210.0, "best_val_acc": 0.9012, "best_epoch": 17, "paper_name": "VGG-19",
                         "paper_val_acc": 0.9234, "trainable_params": 9_573_130, "total_params": 20_158_282,
                         "device": "cuda:0", "precision": "fp32"}, "runs/vgg")
    assert "finished, 20 of 20 epochs in 1h 02m (210 training img/s)" in text
    assert "best validation accuracy 0.9012 at epoch 17; the paper's VGG-19: 0.9234 (-2.22 points)" in text


@pytest.mark.subprocess
@pytest.mark.slow
def test_verbose_log_lines_are_written_above_the_bars(tiny_cifar_dir, tmp_path):
    r = _cli("--epochs", "1", "--verbose", data=tiny_cifar_dir, out=tmp_path / "o")
    assert r.returncode == 0, r.stderr
    logged = [s for s in _segments(r.stderr) if "blocklab" in s]
    assert logged and all(s.startswith("INFO blocklab") for s in logged), logged


@pytest.mark.subprocess
@pytest.mark.slow
def test_json_prints_only_the_summary_on_stdout(tiny_cifar_dir, tmp_path):
    r = _cli("--epochs", "1", "--json", data=tiny_cifar_dir, out=tmp_path / "o")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)  # the whole of stdout is one JSON document
    assert summary["status"] == "succeeded" and summary["epochs_run"] == 1 and summary["resumed_from_epoch"] == 0
    assert summary["best_val_acc"] == _rows(tmp_path / "o")[0]["val_acc"]
    assert "%|" not in r.stderr and "epoch 1" not in r.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_rerun_says_it_resumes_then_that_it_is_complete_and_trains_nothing(tiny_cifar_dir, tmp_path):
    out = tmp_path / "o"
    assert _cli("--epochs", "1", data=tiny_cifar_dir, out=out).returncode == 0
    r = _cli("--epochs", "2", data=tiny_cifar_dir, out=out)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"resuming {out} from epoch 2 (1 of 2 epochs done)")
    assert [x["epoch"] for x in _rows(out)] == [1, 2]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}

    r = _cli("--epochs", "2", data=tiny_cifar_dir, out=out)
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith(f"{out} already holds this run, complete (2 of 2 epochs): nothing to train")
    assert "already complete, 2 of 2 epochs" in r.stderr and "finished" not in r.stderr
    assert "%|" not in r.stderr  # nothing ran: no bars
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # not a file touched

    r = _cli("--epochs", "2", "--json", data=tiny_cifar_dir, out=out)
    summary = json.loads(r.stdout)
    assert summary["already_complete"] and summary["status"] == "complete" and summary["epochs_run"] == 2


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_refused_before_anything_runs(tiny_cifar_dir, tmp_path):
    out = tmp_path / "o"
    assert _cli("--epochs", "1", data=tiny_cifar_dir, out=out).returncode == 0
    r = _cli("--epochs", "2", "--lr", "0.001", data=tiny_cifar_dir, out=out)
    assert r.returncode == 2 and "holds a checkpoint of another config (differs in ['lr'])" in r.stderr
    assert "Traceback" not in r.stderr and "%|" not in r.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_ctrl_c_stops_keeping_the_last_epoch_and_the_rerun_resumes(tiny_cifar_dir, tmp_path):
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-m", "worker.finetune", *ARGS, "--data-dir", str(tiny_cifar_dir), "--out",
                          str(out), "--epochs", "200"], stderr=subprocess.PIPE, text=True, cwd=ROOT, env=ENV)
    seen, first = [], threading.Event()

    def read():
        for line in p.stderr:
            seen.append(line)
            if "epoch 1/200:" in line:
                first.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first.wait(RUN_S), "".join(seen)
        p.send_signal(signal.SIGINT)
        assert p.wait(RUN_S) == 1
    finally:
        p.kill()
    reader.join(10)
    text = "".join(seen)
    assert "stopping after the current step" in text and "run the same command again to resume" in text
    done = len(_rows(out))
    assert 1 <= done < 200
    r = _cli("--epochs", str(done + 1), data=tiny_cifar_dir, out=out)
    assert r.returncode == 0 and r.stderr.startswith(f"resuming {out} from epoch {done + 1}"), r.stderr


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--model", "no_such_net", "--describe"]])
def test_bad_values_are_one_line_errors(bad, tmp_path):
    r = subprocess.run([sys.executable, "-m", "worker.finetune", *bad], capture_output=True, text=True, cwd=ROOT,
                       env=ENV, timeout=RUN_S, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "error" in r.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_teacher_run_teaches_a_student_through_the_command_line(tiny_cifar_dir, tmp_path):
    """--teacher N --teacher-dir: the student's epochs carry the teacher's accuracy and agreement, and the
    teacher's predictions are stored in its folder."""
    teacher = tmp_path / "job-1"
    assert _cli("--epochs", "1", "--json", data=tiny_cifar_dir, out=teacher).returncode == 0
    student = _cli("--model", "deit_tiny_distilled_patch16_224", "--epochs", "1", "--teacher", "1",
                   "--teacher-dir", str(teacher), "--json", data=tiny_cifar_dir, out=tmp_path / "student")
    assert student.returncode == 0, student.stderr
    (row,) = _rows(tmp_path / "student")
    assert 0 <= row["teacher_acc"] <= 1 and 0 <= row["teacher_agreement"] <= 1
    assert list((teacher / "teacher-predictions").iterdir())
    lost = _cli("--model", "deit_tiny_distilled_patch16_224", "--epochs", "1", "--teacher", "1",
                data=tiny_cifar_dir, out=tmp_path / "orphan")
    assert lost.returncode != 0 and "--teacher-dir" in lost.stderr and "Traceback" not in lost.stderr
