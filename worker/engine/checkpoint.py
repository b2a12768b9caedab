"""Checkpoints that carry their config: trainable weights, optimizer, schedule, epoch, RNG state, history, and
fp16's gradient scale (a resumed fp16 run goes on at the scale it had reached, not at the first one).

This module owns what a run saves and restores. Only what training can change is saved (the frozen part is
rebuilt from its weights). Files are written to a temporary name and renamed, so a crash mid-write never leaves a
torn checkpoint; they load with `weights_only=True`, so a checkpoint cannot run code.

A checkpoint resumes under a config that differs from its own only in options that do not change what a run
computes (core.config.config_differences): an option added after the checkpoint was written counts as its
default, so adding an option never strands the runs already stored.
"""
from __future__ import annotations

import errno
import io
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.config import TrainConfig, config_differences

CHECKPOINT = "checkpoint.pt"
_WHERE = "the lab's BLOCKLAB_RUNS_DIR, or the CLI's --out"


class StorageError(RuntimeError):
    """A run's folder cannot take its files: says which folder and what to do (no stack trace for the user)."""


@contextmanager
def writing(folder: Path):
    """Turn the OS's refusals to write into advice naming the folder."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise StorageError(f"no space left in {folder}: free space there or set {_WHERE} to a disk with room, "
                               "then resume; the last finished epoch's checkpoint is kept") from e
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            raise StorageError(f"a file stands where the folder {folder} should be ({e.filename}): move it, or "
                               f"set {_WHERE} elsewhere, then resume") from e
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StorageError(f"cannot write in {folder} ({e.strerror}): make it writable for the worker, or set "
                               f"{_WHERE} elsewhere, then resume") from e
        raise


@dataclass
class Progress:
    """What the training loop keeps between epochs (and a resume restores)."""
    epoch: int = 0
    history: list = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0

    def record(self, row: dict) -> None:
        self.epoch = row["epoch"]
        self.history.append(row)
        if row["val_acc"] is not None and row["val_acc"] > self.best_acc:
            self.best_acc, self.best_epoch = row["val_acc"], row["epoch"]


def save(out_dir: Path, cfg: TrainConfig, progress: Progress, model, optimizer, scheduler, scaler=None) -> Path:
    state = {"config": cfg.to_dict(), "epoch": progress.epoch, "model": model.trainable_state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "rng": _rng_state(_training_device(model)), "history": progress.history, "best_acc": progress.best_acc,
             "best_epoch": progress.best_epoch}
    if scaler is not None and scaler.is_enabled():  # fp16 only: its scale and growth tracker (plain numbers)
        state["scaler"] = scaler.state_dict()
    path = Path(out_dir) / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    buf = io.BytesIO()  # serialized in memory, then written with the OS's own errors (torch's writer hides errno)
    torch.save(state, buf)
    try:
        with writing(out_dir), open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write leaves no stray file; the previous checkpoint is untouched
    return path


def load(out_dir: Path) -> dict | None:
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(out_dir: Path, cfg: TrainConfig, model, optimizer, scheduler, scaler=None) -> Progress:
    """Load the run's checkpoint into model, optimizer, schedule and (fp16) gradient scaler; a fresh Progress when
    there is none. The precision is part of the config, so an fp16 checkpoint only resumes as fp16."""
    ckpt = load(out_dir)
    if ckpt is None:
        return Progress()
    diff = config_differences(ckpt["config"], cfg)
    if diff:
        raise ValueError(f"{out_dir} holds a checkpoint of another config (differs in {diff}); "
                         "use another output folder")
    model.load_state_dict(ckpt["model"], strict=False)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"], _training_device(model))
    return Progress(ckpt["epoch"], list(ckpt["history"]), ckpt["best_acc"], ckpt["best_epoch"])


def _training_device(model) -> torch.device:
    """The device the model trains on: where its first parameter (or buffer) lives."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def _rng_state(device: torch.device) -> dict:
    """The CPU generator, and the CUDA generator of the training device only: saving every visible GPU's (as
    get_rng_state_all does) made a checkpoint that a machine with fewer GPUs could not restore, and the other GPUs'
    generators never touch the run."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
        state["cuda_device"] = device.index if device.index is not None else torch.cuda.current_device()
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    """Restore onto the device the run trains on now, whichever GPU it trained on before. An older checkpoint holds
    a list, one state per GPU of the machine that wrote it: the one of its training device (its `cuda_device`,
    else the first) is taken. A run that trained on the CPU restores no CUDA state, and one resumed on the CPU
    needs none."""
    torch.set_rng_state(state["torch"])
    saved = state.get("cuda")
    if saved is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    if isinstance(saved, (list, tuple)):
        if not saved:
            return
        i = state.get("cuda_device", 0)
        saved = saved[i] if 0 <= i < len(saved) else saved[0]
    torch.cuda.set_rng_state(saved, device)
