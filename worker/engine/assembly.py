"""One way to assemble a run, for every front end: the Celery task (worker/queue/tasks.py), the command line
(worker/finetune.py) and the notebook's `run()` (worker/notebook.py) all call `assemble`.

It finds what the run's folder already holds (a resume from epoch k, or a run already complete), checks the model
name and resolves the weights before anything heavy starts, so that `weights=local` means the same file for every
front end (`<weights dir>/<model>.safetensors|.pth`, weights.local_dir), and raises a `SetupError` whose fixes
are data (errors.py) that each front end phrases in its own terms. `lab_paths` is where the lab's settings
(BLOCKLAB_HOME and its folders) become a run's paths, for the task and the notebook alike.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from core import catalogue
from core.config import TrainConfig, config_differences
from core.errors import Fix, SetupError, Terms
from core.protocol import RunStatus

from . import checkpoint, train
from .checkpoint import StorageError
from .device import DeviceError
from .distill import TeacherError
from .train import Callbacks, Diverged, Paths
from .weights import resolve_local

# What a run can end with that its user can fix, each with a message that says what to do: a front end shows these
# without a stack. SetupErrors (weights, data, the run's folder) carry fixes each front end phrases its own way.
USER_ERRORS: tuple[type[BaseException], ...] = (SetupError, StorageError, DeviceError, TeacherError, Diverged)


def user_error_text(e: BaseException, terms: Terms) -> str | None:
    """A user's error as the front end in use says it: a SetupError's fixes in its `terms` (a form field, a keyword
    argument, a command-line flag), the other USER_ERRORS in their own words; None for anything else (a bug, which
    each front end reports with its type)."""
    if isinstance(e, SetupError):
        return e.phrase(terms)
    if isinstance(e, USER_ERRORS):
        return str(e)
    return None


@dataclass
class Prior:
    """What the run's folder already holds for this config: `epoch` epochs of `history`, `complete` when there
    is nothing left to train."""
    epoch: int
    complete: bool
    history: list = field(default_factory=list)
    best_acc: float | None = None
    best_epoch: int | None = None


@dataclass
class Assembly:
    """A run ready to start: its config (weights resolved to what they mean), its paths, and what its folder
    already holds (None: a fresh run)."""
    cfg: TrainConfig
    paths: Paths
    prior: Prior | None

    def run(self, callbacks: Callbacks | None = None) -> dict:
        """Train (resuming after `prior`) and return the engine's summary."""
        return train.run(self.cfg, self.paths, callbacks)

    def complete_summary(self) -> dict:
        """The summary of a run found complete: the one it wrote, marked as found, not as new."""
        out, cfg, prior = Path(self.paths.out_dir), self.cfg, self.prior
        try:
            summary = json.loads((out / "summary.json").read_text())
        except (OSError, ValueError):
            spec = catalogue.get(cfg.model)
            row = catalogue.paper_row(spec, cfg.dataset) if spec else None
            summary = {"model": cfg.model, "epochs_run": prior.epoch, "best_val_acc": prior.best_acc,
                       "best_epoch": prior.best_epoch, "paper_name": spec.paper_name if spec else None,
                       "paper_val_acc": row["val_acc"] if row else None,
                       "seconds": round(sum(r["seconds"] for r in prior.history), 3)}
        summary.pop("config", None)
        return {**summary, "status": RunStatus.COMPLETE, "epochs": cfg.epochs, "already_complete": True,
                "resumed_from_epoch": prior.epoch}


def lab_paths(settings, out_dir: Path, *, data_dir: Path | None = None, weights_dir: Path | None = None,
              cache_dir: Path | None = None, allow_download: bool | None = None,
              teacher_dir: Path | None = None) -> Paths:
    """A run's paths from the lab's settings (core.settings), each folder replaced where one is given."""
    return Paths(Path(data_dir) if data_dir else settings.data_path, Path(out_dir),
                 Path(weights_dir) if weights_dir else settings.weights_path,
                 Path(cache_dir) if cache_dir else settings.cache_path,
                 cache_cap_bytes=int(settings.cache_cap_gb * 2**30),
                 allow_download=settings.allow_download if allow_download is None else allow_download,
                 teacher_dir=Path(teacher_dir) if teacher_dir else None)


def existing_run(out: Path, cfg: TrainConfig) -> Prior | None:
    """What `out` already holds for `cfg` (None: nothing). A checkpoint of another config is a SetupError now,
    not after the model was built."""
    out = Path(out)
    ckpt = checkpoint.load(out) if out.is_dir() else None
    if ckpt is None:
        return None
    diff = config_differences(ckpt["config"], cfg)
    if diff:
        raise SetupError(f"{out} holds a checkpoint of another config (differs in {diff})",
                         [Fix(folder="out")])
    return Prior(ckpt["epoch"], ckpt["epoch"] >= cfg.epochs, list(ckpt["history"]), ckpt["best_acc"],
                 ckpt["best_epoch"])


def check_model(model: str) -> None:
    """Any model in timm's registry; the catalogue's only add the paper's facts."""
    import timm
    if not timm.is_model(model):
        raise SetupError(f"unknown model {model!r}: not a timm model name",
                         [Fix("model", "deit_tiny_patch16_224",
                              note="(or any name timm.list_models() gives; the catalogue lists the paper's)")])


def assemble(cfg: TrainConfig, paths: Paths) -> Assembly:
    """The run of `cfg` in `paths.out_dir`: what its folder holds, then (when there is something to train) the
    model name and the weights checked, `weights=local` found where every front end looks for it."""
    prior = existing_run(paths.out_dir, cfg)
    if prior is None or not prior.complete:
        check_model(cfg.model)
        if cfg.weights == "local":
            resolve_local(cfg.model, paths.weights_dir)
        elif cfg.weights not in ("hub", "none") and not Path(cfg.weights).is_file():
            raise SetupError(f"weights file {cfg.weights} not found",
                             [Fix("weights", "local"), Fix("weights", "hub"), Fix("weights", "none")])
    return Assembly(cfg, paths, prior)
