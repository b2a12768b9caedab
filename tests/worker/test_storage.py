"""A run whose folder cannot take its files fails with what to do, keeps the previous checkpoint and leaves no
stray temporary file. The full disk is a real one: a small tmpfs (or, where mounting is not allowed, the
kernel's file-size limit, which fails writes the same way), not a mocked exception."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import TrainConfig
from worker.engine import checkpoint
from worker.engine.checkpoint import StorageError
from worker.engine.train import Paths, run

from .test_train import TINY


def _mount_tmpfs(where: Path, size: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return r.returncode == 0


@pytest.mark.mount
@pytest.mark.subprocess
def test_a_full_disk_fails_with_advice_and_keeps_the_last_checkpoint(tiny_cifar_dir, tmp_path):
    cfg1, cfg2 = TrainConfig(**TINY, epochs=1), TrainConfig(**TINY, epochs=2)
    run(cfg1, Paths(tiny_cifar_dir, tmp_path / "probe"))
    size = (tmp_path / "probe" / checkpoint.CHECKPOINT).stat().st_size
    small = tmp_path / "small"
    if _mount_tmpfs(small, int(size * 1.5) + 64 * 1024):  # room for one checkpoint, not for the next beside it
        try:
            out = small / "run"
            run(cfg1, Paths(tiny_cifar_dir, out))
            with pytest.raises(StorageError, match=r"no space left in .*run: free space there or set"):
                run(cfg2, Paths(tiny_cifar_dir, out))
            kept = checkpoint.load(out)
            assert kept["epoch"] == 1 and sorted(p.name for p in out.iterdir()) == [
                "checkpoint.pt", "metrics.jsonl", "predictions", "summary.json"]  # no checkpoint.tmp left behind
        finally:
            subprocess.run(["umount", str(small)], check=False)
        return
    # Fallback: the same write refused by RLIMIT_FSIZE (EFBIG), in a child process of its own.
    out = tmp_path / "limited"
    run(cfg1, Paths(tiny_cifar_dir, out))
    code = (f"import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({size // 2}, {size // 2})); "
            f"from worker.finetune import main; raise SystemExit(main(['--model', '{TINY['model']}', '--data-dir', "
            f"'{tiny_cifar_dir}', '--out', '{out}', '--epochs', '2', '--batch-size', '32', '--weights', 'none', "
            f"'--image-size', '32', '--val-limit', '60', '--precision', 'fp32', '--device', 'cpu']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 2 and "no space left in" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert checkpoint.load(out)["epoch"] == 1 and not (out / "checkpoint.tmp").exists()


def test_a_file_where_the_run_folder_should_be_says_so(tiny_cifar_dir, tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(StorageError, match="a file stands where the folder .* should be"):
        run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "runs" / "job-1"))


def test_the_worker_reports_storage_errors_as_advice():
    from worker.queue.tasks import job_error_text
    err = StorageError("no space left in /runs/job-1: free space there or set ...")
    assert job_error_text(err) == str(err)

