"""DeiT's distillation from a teacher job: the teacher's predictions on the student's training images, and the loss.

The teacher is a finished run of this lab (any model, any image size): its folder holds a checkpoint that carries
its config, so the teacher is rebuilt exactly as it trained (the frozen weights it was built from, the same seed
for a random init, then its `trainable_state_dict`) and run in eval mode on the raw uint8 images, preprocessed its
own way. Its logits depend only on the image and the flip state, so each (image, flip state) pair the student uses
goes through the teacher once: the logits are stored WITH THE TEACHER JOB (`<teacher>/teacher-predictions/`,
keyed by the teacher's trained state and config, the student's training-data fingerprint, the flip states and the
numerics), and a later epoch, a resumed attempt or another student job on the same images reads them back. When
everything a run needs is stored, the teacher model is never even built.

The loss (DeiT, Touvron et al. 2021, Sec. 5), on the student's two heads [class head, distillation head]:
hard = 0.5 CE(class, labels) + 0.5 CE(dist, teacher argmax); soft = 0.5 CE(class, labels) + 0.5 T^2
KL(softmax(teacher / T) || softmax(dist / T)). Label smoothing, when set, smooths the label term only (DeiT's
hard-label term has none either).
"""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from core import catalogue
from core.config import TrainConfig
from core.memory import Placement
from core.protocol import RunStatus

from . import checkpoint
from .builders import build_model
from .store import FeatureStore, fill_missing, states_of, write_atomic
from .weights import fingerprint

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "teacher-predictions"  # inside the teacher job's folder
STORE_VERSION = 1  # bump when what is stored or its key changes meaning
CHUNK = 128  # images per teacher forward (a stop is checked between chunks and inside each)


class TeacherError(ValueError):
    """The teacher cannot teach (missing, unfinished, another dataset): says which job and what to do."""


# -- the loss -------------------------------------------------------------------------------------------------------
def distillation_loss(heads: list[torch.Tensor], labels: torch.Tensor, teacher_logits: torch.Tensor, kind: str,
                      temperature: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """DeiT's loss on [class head, distillation head] logits (fp32 math whatever the autocast dtype)."""
    if len(heads) != 2:
        raise ValueError(f"distillation needs a class and a distillation head; the model has {len(heads)}")
    cls, dist = (h.float() for h in heads)
    teacher_logits = teacher_logits.detach().float()  # a target: nothing flows back into the teacher
    base = F.cross_entropy(cls, labels, label_smoothing=label_smoothing)
    if kind == "hard":
        second = F.cross_entropy(dist, teacher_logits.argmax(1))
    elif kind == "soft":
        t = float(temperature)
        second = F.kl_div(F.log_softmax(dist / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                          reduction="batchmean", log_target=True) * (t * t)
    else:
        raise ValueError(f"unknown distillation {kind!r}: hard or soft")
    return 0.5 * base + 0.5 * second


# -- the teacher job ------------------------------------------------------------------------------------------------
def _teacher_checkpoint(job: int, folder: Path | None) -> dict:
    """The teacher's last checkpoint, when its folder says the job succeeded; else a TeacherError."""
    if folder is None:
        raise TeacherError(f"teacher job {job}: its run folder is not known (on the command line pass "
                           "--teacher-dir, the teacher run's --out folder)")
    folder = Path(folder)
    where = str(folder)
    if not folder.is_dir():
        raise TeacherError(f"teacher job {job}: its run folder {where} is missing (the job was deleted, or ran "
                           "on a machine that does not share this runs directory): choose another teacher, or "
                           "train the teacher again and use its new job id")
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if not summary or summary.get("status") != RunStatus.SUCCEEDED:
        state = summary.get("status") if summary else "not finished"
        raise TeacherError(f"teacher job {job} has not succeeded ({state}; {where}): a teacher must be a finished "
                           "job. Let it finish (resume it), or choose a job that succeeded")
    try:
        ckpt = checkpoint.load(folder)
    except (OSError, RuntimeError, EOFError) as e:
        raise TeacherError(f"teacher job {job}: its checkpoint in {where} cannot be read ({e}); choose another "
                           "teacher, or train it again") from e
    if ckpt is None:
        raise TeacherError(f"teacher job {job}: no checkpoint in {where} (its folder was emptied?); choose another "
                           "teacher, or train it again")
    return ckpt


def _teacher_config(job: int, ckpt: dict, cfg: TrainConfig) -> TrainConfig:
    """The teacher's own config (as it trained), on the student's device; the same dataset as the student's."""
    saved = dict(ckpt["config"])
    tdataset = saved.get("dataset", "cifar10")  # a checkpoint older than the option ran CIFAR-10
    if tdataset != cfg.dataset or catalogue.num_classes(tdataset) != catalogue.num_classes(cfg.dataset):
        raise TeacherError(f"teacher job {job} was trained on {tdataset} ({catalogue.num_classes(tdataset)} "
                           f"classes), this job on {cfg.dataset} ({catalogue.num_classes(cfg.dataset)}): choose a "
                           f"teacher trained on {cfg.dataset}")
    saved["device"] = cfg.device
    saved["teacher"] = None  # the teacher's own teacher taught it; its predictions are in its weights now
    try:
        return TrainConfig.from_dict(saved)
    except (TypeError, ValueError) as e:
        raise TeacherError(f"teacher job {job}: its stored config is not one this lab can build ({e})") from e


def build_teacher(tcfg: TrainConfig, ckpt: dict, policy, weights_dir: Path | None = None, stop=None,
                  on_progress=None):
    """The teacher model as its run left it, in eval mode, and its preprocessing. Built as train.py builds a run:
    the seed first (a random init, weights="none", comes out the same), then the trained state over it; the
    student's random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tcfg.seed)
        model, prep = build_model(tcfg, policy, weights_dir, stop=stop, on_progress=on_progress)
    model.load_state_dict(ckpt["model"], strict=False)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, prep


def _host(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.device.type == "cpu" else t.cpu()


def _numerics_key(amp: dict) -> dict:
    """What of the numerics the stored logits depend on: bf16 autocast or not, as stores before fp16 were keyed
    (they stay valid), and fp16 apart from both."""
    dtype = amp.get("dtype") if amp.get("enabled") else None
    return {"bf16": dtype is torch.bfloat16, **({"fp16": True} if dtype is torch.float16 else {})}


def _predict(model, prep, images_u8: torch.Tensor, flip: torch.Tensor | None, amp: dict) -> torch.Tensor:
    """The teacher's logits (fp32) for a chunk of raw images: heads averaged, as at evaluation."""
    with torch.no_grad(), torch.autocast(**amp):
        return model(prep(images_u8, flip)).float()


class TeacherPredictions:
    """The teacher's logits for every (training image, flip state) a run uses, filled before each epoch.

    The logits are a per-image store (store.py, the one frozen features use) on the training device, its filled
    flags on the host: a batch checks its flags with the host indices of the epoch's order and gathers its logits
    with the device ones, so no batch waits for a readback. Stored as one file in the teacher's folder after every
    fill that added to it (merged with what another student stored meanwhile, written to a temporary name and
    renamed)."""

    def __init__(self, job: int, folder: Path, tcfg: TrainConfig, ckpt: dict, images: torch.Tensor, key: str,
                 store: FeatureStore, amp: dict, policy, weights_dir, meta: dict):
        self.job, self.folder, self.tcfg, self.ckpt, self.images = job, folder, tcfg, ckpt, images
        self.key, self.store, self.amp, self.policy = key, store, amp, policy
        self.weights_dir, self.meta = weights_dir, meta
        self.model = self.prep = None  # built at the first prediction the store lacks
        self.info = {"job": job, "model": tcfg.model, "key": key, "loaded": 0, "computed": 0,
                     "reused": False, "stored": False}

    @property
    def logits(self) -> torch.Tensor:
        """(images, states, classes) fp32 logits on the training device (unfilled rows hold no prediction)."""
        return self.store.tensors[0]

    @property
    def filled(self) -> torch.Tensor:
        return self.store.filled

    @property
    def path(self) -> Path:
        return self.folder / PREDICTIONS_DIR / f"{self.key}.pt"

    @classmethod
    def setup(cls, cfg: TrainConfig, teacher_dir: Path | None, policy, amp: dict, images: torch.Tensor,
              train_fingerprint: str, weights_dir: Path | None = None) -> TeacherPredictions:
        """Check the teacher job and read back what its folder already holds for these images."""
        job = cfg.teacher
        ckpt = _teacher_checkpoint(job, teacher_dir)
        tcfg = _teacher_config(job, ckpt, cfg)
        states = 2 if cfg.hflip else 1
        k = catalogue.num_classes(cfg.dataset)
        teacher_key = {o: v for o, v in tcfg.to_dict().items() if o not in ("device", "num_workers", "epochs")}
        meta = {"version": STORE_VERSION, "teacher_job": job, "teacher_state": fingerprint(ckpt["model"]),
                "teacher_epoch": ckpt.get("epoch"), "teacher_config": teacher_key, "train": train_fingerprint,
                "images": len(images), "states": states, "classes": k, "tf32": cfg.tf32,
                **_numerics_key(amp)}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:24]
        store = FeatureStore(len(images), states, [(k,)], torch.float32,
                             Placement("device", "teacher logits beside the images"),
                             policy.replace(device=images.device))
        store.tensors[0].zero_()
        out = cls(job, Path(teacher_dir), tcfg, ckpt, images, key, store, amp, policy, weights_dir, meta)
        stored = out._read()
        if stored is not None:
            out.logits.copy_(stored[0].to(images.device))
            out.filled.copy_(stored[1])
            out.info.update(loaded=int(out.filled.sum()), reused=bool(out.filled.any()))
            log.info("teacher job %s: %d stored predictions reused from %s", job, out.info["loaded"], out.path)
        return out

    def _read(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            return None
        except (OSError, RuntimeError, EOFError, ValueError) as e:  # torn or foreign: computed again
            log.warning("teacher predictions %s unreadable (%s): computing them again", self.path, e)
            return None
        if saved.get("meta") != self.meta or tuple(saved["logits"].shape) != tuple(self.logits.shape):
            return None
        return saved["logits"], saved["filled"]

    def lacking(self, idx: torch.Tensor, state: torch.Tensor) -> bool:
        """Whether any (idx, state) has no prediction yet: host tensors and the host flags, never a readback."""
        return self.store.lacking(idx, state) is not None

    def fill(self, flips: torch.Tensor | None, check: Callable[[], None] | None = None,
             report: Callable[[int, int], None] | None = None, stop=None, on_progress=None) -> int:
        """The teacher's forward for the (image, flip state) pairs this epoch uses and the store lacks; the store
        written back when it grew. Returns how many images went through the teacher."""
        state = states_of(_host(flips), len(self.images))
        if not len(self.store.todo(state)):
            return 0
        if self.model is None:
            log.info("teacher job %s: building %s to predict %d images", self.job, self.tcfg.model,
                     len(self.store.todo(state)))
            self.model, self.prep = build_teacher(self.tcfg, self.ckpt, self.policy, self.weights_dir, stop=stop,
                                                  on_progress=on_progress)

        def predict(m: torch.Tensor, s: torch.Tensor, _rows: int) -> list[torch.Tensor]:
            x = self.images[m.to(self.images.device)]
            return [_predict(self.model, self.prep, x, s.bool().to(x.device), self.amp)]

        def chunks(todo: torch.Tensor):
            return ((todo[i:i + CHUNK], len(todo[i:i + CHUNK])) for i in range(0, len(todo), CHUNK))

        with stop.guard(self.model) if stop is not None else nullcontext():
            total = fill_missing(self.store, state, predict, chunks, check, report)
        self.info["computed"] += total
        self._write()
        return total

    def get(self, idx: torch.Tensor, flips: torch.Tensor | None,
            on_device: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> torch.Tensor:
        """The teacher's logits for a batch (`flips`: the batch's own flip draws). `idx`, `flips`: host tensors, for
        the check against the host flags; `on_device`: the same on the logits' device (slices of the epoch's order),
        to gather with, so a batch moves no index across (each such move is a blocking sync)."""
        idx_cpu = _host(idx)  # the training loop passes host tensors: nothing is copied
        state = states_of(_host(flips), len(idx_cpu))
        if self.lacking(idx_cpu, state):
            raise RuntimeError("teacher predictions asked for before `fill` ran for this epoch")
        dev = None
        if on_device is not None:
            dev_idx, dev_flips = on_device
            dev = (dev_idx, dev_flips.long() if dev_flips is not None else torch.zeros_like(dev_idx))
        return self.store.get(idx_cpu, state, torch.float32, dev)[0]

    def _write(self) -> None:
        """Store the predictions with the teacher job. A failure costs only recomputation later: never the run
        (the teacher's folder may have been deleted meanwhile: it is not made again)."""
        try:
            other = self._read()  # another student on the same images may have stored more meanwhile
            logits, filled = self.logits.cpu(), self.filled.cpu()
            if other is not None:
                more = other[1] & ~filled
                logits, filled = torch.where(more[..., None], other[0], logits), filled | other[1]
            folder = self.folder / PREDICTIONS_DIR
            folder.mkdir(exist_ok=True)  # never parents: a deleted teacher stays deleted
            buf = io.BytesIO()
            torch.save({"meta": self.meta, "logits": logits, "filled": filled}, buf)
            write_atomic(self.path, buf.getbuffer())
            self.info["stored"] = True
        except OSError as e:
            level = logging.INFO if e.errno in (errno.ENOENT,) else logging.WARNING
            log.log(level, "teacher job %s: predictions not stored in %s (%s); later runs compute them again",
                    self.job, self.folder, e)
