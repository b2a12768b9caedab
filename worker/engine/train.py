"""The single-block fine-tuning run, top to bottom: data, model, feature cache, epochs, checkpoints.

Pure PyTorch + timm: no web or queue imports. The command line (finetune.py) and the Celery task (tasks.py)
both call `run()` and watch it through `Callbacks`. Whatever differs by device type (feature store, pinned memory,
channels_last, autocast dtype) is the run's DevicePolicy (device.py): tests pass one to force a GPU branch on the
CPU. Numerics are the paper's fp32 (TF32 on GPUs that have it, `tf32`) unless `precision` asks for bf16 or fp16;
fp16 trains with a dynamic gradient scaler (`grad_scaler`), whose scale the checkpoint keeps.

The loss is cross-entropy (with label smoothing when set). With `head_l2` (the authors' Keras CNNs: 0.01) the
training loss adds Keras' L2 penalty on the head's kernels; `train_loss` and `val_loss` stay plain cross-entropy,
comparable across models, and `keras_train_loss` / `keras_val_loss` record what Keras would have printed (the
authors' logs, shared/paper/curves.csv, are such losses).

With a `teacher` (a finished job; distill.py) the training loss is DeiT's distillation loss on the two heads
(class head against the labels, distillation head against the teacher): `train_loss` records that loss, and each
epoch adds the teacher's accuracy on its training images and the student's agreement with it. Validation stays
the average of both heads, as without a teacher.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from core import catalogue
from core.config import TrainConfig
from core.protocol import Phase, RunStatus, epoch_row, progress

from . import checkpoint
from . import data as cifar
from .builders import build_model, grad_scaler, make_optimizer  # tests reach them here too; callers: worker.engine
from .device import DevicePolicy, fp32_math, precision_name, resolve_device  # resolve_device: tasks.py, bench.py
from .distill import TeacherError, TeacherPredictions, distillation_loss
from .features import FrozenFeatures
from .model import SingleBlockModel  # tests patch its methods through this module
from .predictions import ValPredictions
from .schedule import PlateauLR
from .stop import Stop, StopRequested  # StopRequested: callers import it from here

log = logging.getLogger("blocklab.engine")


STOP_POLL_S = 0.2  # a `should_stop` callback is asked at most this often (a stop Event is read at every check)


@dataclass
class Callbacks:
    """How a caller watches and steers a run. Progress comes as core.protocol.progress(...) dicts for every phase:
    starting, downloading (bytes of total, `what`), loading, features (images of total, split), training and
    validating (batch of batches, epoch). A stop is asked for by setting `stop` (any thread; honoured within a
    layer of the model, in every phase) or by `should_stop` returning True (asked by time, every STOP_POLL_S, at
    batch and chunk boundaries, and after every epoch)."""
    on_progress: Callable[[dict], None] | None = None
    on_epoch: Callable[[dict], None] | None = None  # the epoch's metrics row
    on_info: Callable[[dict], None] | None = None  # once, before the first epoch: counts, device, cache
    on_stopped: Callable[[dict], None] | None = None  # a stop was honoured: the summary, before the cache is kept
    stop: Stop | threading.Event | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass
class Paths:
    data_dir: Path
    out_dir: Path
    weights_dir: Path | None = None
    cache_dir: Path | None = None  # None: no feature cache kept across jobs
    cache_cap_bytes: int = 64 << 30  # core.settings cache_cap_gb: the default model's 31 GiB cache fits
    allow_download: bool = False
    download_url: str | None = None  # None: the dataset's official mirror (data.py)
    teacher_dir: Path | None = None  # the teacher job's run folder (cfg.teacher); its predictions are kept there


class Diverged(RuntimeError):
    """The loss stopped being a number: the run ends `failed`, and every earlier epoch is kept."""

    def __init__(self, epoch: int, nonfinite: dict, precision: str = "fp32"):
        fp16 = ("; under fp16 an activation beyond float16's range (65,504) does this too: try precision bf16 or "
                "fp32" if precision == "fp16" else "")
        super().__init__(f"the loss became {next(iter(nonfinite.values()))} at epoch {epoch}; try a lower "
                         f"learning rate{fp16}")
        self.epoch, self.nonfinite = epoch, nonfinite


class _Watch:
    """The run's side of its callbacks: progress out (with the deprecated per-batch shape), stop checks in."""

    def __init__(self, cb: Callbacks):
        self.cb = cb
        stop = cb.stop
        self.stop = stop if isinstance(stop, Stop) else Stop(stop)
        self.last_poll = float("-inf")
        self.phase: str | None = None

    def report(self, phase: Phase, done: int = 0, total: int | None = None, **kw) -> None:
        self.phase = Phase(phase).value
        if self.cb.on_progress:
            self.cb.on_progress(progress(phase, done, total, **kw))

    def forward(self, p: dict) -> None:
        """A progress report made elsewhere (the weights download): passed on, its phase noted."""
        self.phase = p["phase"]
        if self.cb.on_progress:
            self.cb.on_progress(p)

    def check(self, force_poll: bool = False) -> None:
        """At a batch or chunk boundary: the Event now, the callback when its time has come (or `force_poll`)."""
        self.stop.check()
        if self.cb.should_stop is None:
            return
        now = time.monotonic()
        if force_poll or now - self.last_poll >= STOP_POLL_S:
            self.last_poll = now
            if self.cb.should_stop():
                self.stop.set()
                raise StopRequested


@dataclass
class _State:
    """What a run has built so far: a stop in any phase ends with a summary of it."""
    progress: checkpoint.Progress | None = None
    counts: dict | None = None
    info: dict | None = None
    features: FrozenFeatures | None = None
    teacher: TeacherPredictions | None = None


def run(cfg: TrainConfig, paths: Paths, callbacks: Callbacks | None = None,
        dataset: cifar.Cifar10 | None = None, policy: DevicePolicy | None = None) -> dict:
    """Train `cfg` and return its summary (status "succeeded", or "stopped" when a stop was asked for, in any
    phase). `policy` defaults to what the device offers (device.py)."""
    policy = policy or DevicePolicy.for_device(resolve_device(cfg.device))
    try:
        with fp32_math(cfg.tf32):
            return _run(cfg, paths, callbacks or Callbacks(), dataset, policy)
    finally:
        release_memory(policy.device)


def release_memory(device: torch.device) -> None:
    """Give the finished job's memory back: a long-lived worker otherwise keeps it in PyTorch's caching allocator,
    where the next job's placement check (mem_get_info) does not see it as free."""
    import gc
    gc.collect()  # the model, images and features of the run: cycles (autograd, closures) hold some of them
    if device.type == "cuda":
        torch.cuda.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work: a clock read before it times the host's queueing, not the epoch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run(cfg: TrainConfig, paths: Paths, cb: Callbacks, dataset: cifar.Cifar10 | None,
         policy: DevicePolicy) -> dict:
    out_dir = Path(paths.out_dir)
    with checkpoint.writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
    watch = _Watch(cb)
    state = _State()
    watch.report(Phase.STARTING)
    try:
        return _finish(cfg, cb, dataset, paths, policy, watch, state, out_dir)
    finally:
        if state.features is not None:  # every way out, a failure too: the cache's scratch files go
            state.features.close()


def _finish(cfg: TrainConfig, cb: Callbacks, dataset, paths: Paths, policy: DevicePolicy, watch: _Watch,
            state: _State, out_dir: Path) -> dict:
    """Train, then write the summary (and keep the cache) whether the run finished or was stopped."""
    try:
        _train(cfg, paths, cb, dataset, policy, watch, state, out_dir)
        status = RunStatus.SUCCEEDED
    except StopRequested:
        status = RunStatus.STOPPED
        log.info("stop requested during %s: ending (the checkpoint of the last finished epoch is kept)",
                 watch.phase)
    if state.progress is None:  # stopped before the checkpoint was read: say what it holds
        saved = checkpoint.load(out_dir)
        state.progress = (checkpoint.Progress(saved["epoch"], list(saved["history"]), saved["best_acc"],
                                              saved["best_epoch"]) if saved else checkpoint.Progress())
        _write_metrics(out_dir, state.progress.history)  # as it was: setup had emptied it
    summary = _summary(cfg, state, status, stopped_in=watch.phase if status == RunStatus.STOPPED else None)
    if status == RunStatus.STOPPED and cb.on_stopped:
        cb.on_stopped(summary)  # before keeping the cache, which can take a while for a large one
    if state.features is not None:
        state.features.persist()
    with checkpoint.writing(out_dir):
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _train(cfg: TrainConfig, paths: Paths, cb: Callbacks, dataset: cifar.Cifar10 | None, policy: DevicePolicy,
           watch: _Watch, state: _State, out_dir: Path) -> None:
    with checkpoint.writing(out_dir):
        _write_metrics(out_dir, [])  # a folder that cannot take files says so now, not after an epoch
    device = policy.device
    amp = policy.amp(cfg.precision)
    torch.manual_seed(cfg.seed)

    # -- model (its weights downloaded when asked), built before the data: a stop is honoured between steps -----
    watch.check()
    model, prep = build_model(cfg, policy, paths.weights_dir, stop=watch.stop, on_progress=watch.forward,
                              data_dir=paths.data_dir)
    watch.report(Phase.STARTING, 1, 1, step="model")
    watch.check()

    # -- data: uint8 arrays on the training device; every transform is batched -------------------------------
    train, val, dataset = _load_data(cfg, paths, dataset, watch, prep.image_size)
    images = {"train": torch.from_numpy(train.images).to(device), "val": torch.from_numpy(val.images).to(device)}
    labels = {"train": torch.from_numpy(train.labels).to(device), "val": torch.from_numpy(val.labels).to(device)}
    watch.check()

    with watch.stop.guard(model):  # from here on a stop lands inside the model's forward and backward passes
        # -- the frozen part's features (keyed on the frozen part only: a resumed run finds its cache) ----------
        prints = {"train": cifar.fingerprint(train), "val": cifar.fingerprint(val)}
        train_key = prints["train"]
        features = state.features = FrozenFeatures.setup(cfg, paths, model, prep, policy, amp, train, val, images,
                                                         prints)
        teacher = state.teacher = _setup_teacher(cfg, paths, model, policy, amp, images["train"], train_key)
        scaler = grad_scaler(amp)
        optimizer = make_optimizer(model, cfg, fused=scaler.is_enabled())
        scheduler = PlateauLR(optimizer, cfg.lr_factor, cfg.lr_patience, cfg.min_lr)
        progress_ = state.progress = checkpoint.restore(out_dir, cfg, model, optimizer, scheduler, scaler)
        if progress_.epoch:
            log.info("resuming %s after epoch %d", out_dir, progress_.epoch)
        _write_metrics(out_dir, progress_.history)
        counts = state.counts = model.count_params()
        info = state.info = {
            **counts, "device": str(device), "precision": precision_name(amp), "tf32": cfg.tf32,
            "channels_last": prep.channels_last, "image_size": prep.image_size, "train_images": len(train),
            "val_images": len(val), "resumed_from_epoch": progress_.epoch, "feature_cache": features.info,
            "teacher": teacher.info if teacher else None, "dataset": cfg.dataset,
            # Where the last-block rule cut, as built: a model outside the catalogue's card shows it (core.config).
            "unfreeze_from": model.plan.unfreeze_from, "trainable_modules": model.trainable_module_names(),
            "blocks": len(model.blocks), "heads": len(model.heads),
            "native_size": model.backbone.pretrained_cfg.get("input_size", [None])[-1],
            "skipped_files": cifar.skipped_summary(dataset),  # a folder's unreadable files (None for CIFAR)
            # What a reproduction report needs to say what ran: the library versions and the exact data.
            "torch_version": torch.__version__, "timm_version": timm.__version__, "data_fingerprint": prints}
        log.info("run: %s", json.dumps(info))
        if cb.on_info:
            cb.on_info(info)

        kept = ValPredictions(out_dir, cfg.dataset, dataset.classes, val)  # the mistakes gallery's (core/mistakes.py)
        for epoch in range(progress_.epoch + 1, cfg.epochs + 1):
            row = _epoch(model, optimizer, scheduler.lr, features, labels, cfg, amp, epoch, watch, teacher, scaler,
                         keep=kept.keep)
            _append_metrics(out_dir, row)
            if row["nonfinite"]:  # a diverged epoch is data, but not a state to resume from
                if cb.on_epoch:
                    cb.on_epoch(row)
                raise Diverged(epoch, row["nonfinite"], info["precision"])
            scheduler.step(row["val_acc"])
            progress_.record(row)
            if progress_.best_epoch == epoch:
                kept.best()
            checkpoint.save(out_dir, cfg, progress_, model, optimizer, scheduler, scaler)
            log.info("epoch %d/%d: val_acc %.4f val_loss %.4f (%.1f img/s)", epoch, cfg.epochs, row["val_acc"],
                     row["val_loss"], row["images_per_s"])
            if cb.on_epoch:
                cb.on_epoch(row)
            if epoch < cfg.epochs:
                watch.check(force_poll=True)


def _load_data(cfg: TrainConfig, paths: Paths, dataset: cifar.Cifar10 | None, watch: _Watch,
               image_size: int) -> tuple[cifar.Split, cifar.Split, cifar.Cifar10]:
    """The training subset (stratified and seeded) and the validation images the config asks for (the archive
    downloaded first when allowed and absent: bytes reported, a stop honoured at every chunk; a folder's images
    read at the run's image size, counted, a stop honoured between them), and the dataset they come from."""
    def read(done: int, total: int) -> None:
        watch.check()
        watch.report(Phase.LOADING, done, total)

    def downloaded(done: int, total: int) -> None:
        watch.stop.check()
        watch.report(Phase.DOWNLOADING, done, total or None, what=catalogue.DATASETS[cfg.dataset].title)

    if dataset is None:
        watch.report(Phase.LOADING)
        dataset = cifar.load(cfg.dataset, paths.data_dir, paths.allow_download, paths.download_url,
                             progress=downloaded, image_size=image_size, on_read=read)
    train = cifar.stratified_subset(dataset.train, cfg.train_per_class, cfg.seed)
    val = cifar.limit(dataset.val, cfg.val_limit)
    watch.report(Phase.LOADING, len(train) + len(val), len(train) + len(val))
    return train, val, dataset


def _setup_teacher(cfg: TrainConfig, paths: Paths, model: SingleBlockModel, policy: DevicePolicy, amp: dict,
                   train_images: torch.Tensor, train_key: str) -> TeacherPredictions | None:
    """The teacher's stored predictions for these training images (None without a teacher). The API refuses a
    teacher for a one-headed model; the command line gets the same advice here."""
    if cfg.teacher is None:
        return None
    if len(model.heads) != 2:
        raise TeacherError(f"{cfg.model} has no distillation head, so it cannot learn from a teacher (job "
                           f"{cfg.teacher}); choose a distilled DeiT (deit_*_distilled_*) or no teacher")
    return TeacherPredictions.setup(cfg, paths.teacher_dir, policy, amp, train_images, train_key, paths.weights_dir)


def _epoch(model, optimizer, lr: float, features: FrozenFeatures, labels: dict, cfg: TrainConfig, amp, epoch: int,
           watch: _Watch, teacher: TeacherPredictions | None = None,
           scaler: torch.amp.GradScaler | None = None, keep: Callable | None = None) -> dict:
    """One epoch, as the protocol's epoch row: the frozen pass for the flip states this epoch uses and the cache
    lacks (part of the epoch's training time, as when it ran batch by batch), the teacher's predictions the same
    way, training, then validation (its frozen pass in the first epoch)."""
    def pass_of(split, **kw):
        return lambda done, total: watch.report(Phase.FEATURES, done, total, epoch=epoch, split=split, **kw)

    device = labels["train"].device
    synchronize(device)
    t0 = time.perf_counter()
    perm, flips = _epoch_order(cfg, epoch, len(labels["train"]))
    features.fill("train", flips, watch.check, pass_of("train"))
    if teacher is not None:
        teacher.fill(flips, watch.check, pass_of("train", what=f"teacher job {teacher.job}"), stop=watch.stop,
                     on_progress=watch.forward)
    tr = _train_epoch(model, optimizer, features, labels["train"], cfg, amp, epoch, watch, perm, flips, teacher,
                      scaler)
    synchronize(device)
    train_seconds = time.perf_counter() - t0
    features.fill("val", None, watch.check, pass_of("val"))
    ev = _evaluate(model, features, labels["val"], cfg, amp, watch, epoch)
    synchronize(device)
    seconds = time.perf_counter() - t0
    if keep is not None:  # after the clock: writing the predictions is no part of the epoch's time
        keep(epoch, ev["pred"], ev["confidence"])
    with torch.no_grad():  # the penalty at the epoch's end weights, as Keras adds it to its val_loss
        penalty = float(_l2_penalty(model, cfg))
    return epoch_row(epoch=epoch, train_loss=tr["loss"], train_acc=tr["acc"], val_loss=ev["loss"], val_acc=ev["acc"],
                     lr=lr, seconds=round(seconds, 3), keras_train_loss=tr["keras_loss"],
                     keras_val_loss=ev["loss"] + penalty if cfg.head_l2 else None,
                     train_seconds=round(train_seconds, 3),
                     images_per_s=round(len(labels["train"]) / train_seconds, 2),
                     teacher_acc=tr.get("teacher_acc"), teacher_agreement=tr.get("teacher_agreement"),
                     per_class_acc=ev["per_class"],
                     confusion=ev["confusion"])


def _l2_penalty(model: SingleBlockModel, cfg: TrainConfig) -> torch.Tensor:
    """Keras' kernel_regularizer=l2(head_l2) on both Dense layers of the head: head_l2 x the sum of squared kernel
    weights (0 when off)."""
    if not cfg.head_l2:
        return torch.zeros(())
    return cfg.head_l2 * model.head_l2_term()


def _train_epoch(model, optimizer, features: FrozenFeatures, y, cfg: TrainConfig, amp, epoch, watch: _Watch,
                 perm: torch.Tensor, flips: torch.Tensor | None, teacher: TeacherPredictions | None = None,
                 scaler: torch.amp.GradScaler | None = None) -> dict:
    """One pass over the training images in the epoch's seeded order: the mean training loss (cross-entropy, or
    with a teacher the distillation loss), accuracy (heads averaged), with an L2 penalty the mean of loss plus
    penalty (the loss Keras prints), and with a teacher its accuracy and the student's agreement with it.

    With fp16's scaler the scaled loss goes backward and `scaler.step` unscales the gradients before Adam uses
    them (a gradient clip, were there one, would need `scaler.unscale_` first); the recorded loss is the unscaled
    one, so a step the scaler skips is not a non-finite loss (only a loss that is not a number is)."""
    if scaler is None:
        scaler = torch.amp.GradScaler(y.device.type, enabled=False)
    n = len(y)
    order = _EpochOrder(perm, flips, y)
    nb = math.ceil(n / cfg.batch_size)
    model.train()
    zero = torch.zeros((), device=y.device)
    loss_sum, keras_sum, correct = zero.clone(), zero.clone(), zero.clone()
    teacher_correct, agree = zero.clone(), zero.clone()
    watch.report(Phase.TRAINING, 0, nb, epoch=epoch)
    for b in range(nb):
        sl = slice(b * cfg.batch_size, (b + 1) * cfg.batch_size)
        idx, flip, y_b = order.perm[sl], order.flip_at(sl), order.y[sl]
        on_device = (order.perm_dev[sl], order.flip_at(sl, on_device=True))
        feats = features.train(idx, flip, on_device)
        with torch.autocast(**amp):
            if teacher is None:
                logits = model.forward_from_features(feats)
                loss = F.cross_entropy(logits.float(), y_b, label_smoothing=cfg.label_smoothing)
            else:
                t_logits = teacher.get(idx, flip, on_device)
                heads = model.forward_heads(feats)
                logits = torch.stack(heads).mean(0)  # the student's prediction, as at evaluation
                loss = distillation_loss(heads, y_b, t_logits, cfg.distillation, cfg.distill_temperature,
                                         cfg.label_smoothing)
        total = loss + _l2_penalty(model, cfg).to(loss.device) if cfg.head_l2 else loss  # the penalty in fp32
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()  # a disabled scaler passes the loss and the step through as they are
        scaler.step(optimizer)
        scaler.update()
        loss_sum += loss.detach() * len(idx)
        keras_sum += total.detach() * len(idx)  # Keras' progress bar: the batch-size-weighted mean of its loss
        pred = logits.detach().argmax(1)
        correct += (pred == y_b).sum()
        if teacher is not None:
            t_pred = t_logits.argmax(1)
            teacher_correct += (t_pred == y_b).sum()
            agree += (pred == t_pred).sum()
        watch.report(Phase.TRAINING, b + 1, nb, epoch=epoch)
        watch.check()
    out = {"loss": float(loss_sum) / n, "acc": float(correct) / n,
           "keras_loss": float(keras_sum) / n if cfg.head_l2 else None}
    if teacher is not None:
        out.update(teacher_acc=float(teacher_correct) / n, teacher_agreement=float(agree) / n)
    return out


class _EpochOrder:
    """The epoch's order, once on the host and once on the labels' device (one copy per epoch, not per batch): a
    batch slices the host copy for the fill's bookkeeping and a host-resident cache, the device copy for a cache on
    the device, the images and the labels, so no batch waits for a transfer. Labels and flips are put in order
    once, so a batch slices them instead of indexing with a tensor from the other side."""

    def __init__(self, perm: torch.Tensor, flips: torch.Tensor | None, y: torch.Tensor):
        self.perm = perm
        self.perm_dev = perm.to(y.device)
        self.y = y[self.perm_dev]
        self.flips = flips[perm] if flips is not None else None  # per position in the order
        self.flips_dev = self.flips.to(y.device) if flips is not None else None

    def flip_at(self, sl: slice, on_device: bool = False) -> torch.Tensor | None:
        flips = self.flips_dev if on_device else self.flips
        return flips[sl] if flips is not None else None


def _epoch_order(cfg: TrainConfig, epoch: int, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's batch order and flip draws: a function of seed and epoch only, so resume repeats them."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if cfg.hflip else None
    return perm, flips


def _evaluate(model, features: FrozenFeatures, val_y, cfg: TrainConfig, amp, watch: _Watch, epoch: int) -> dict:
    """Validation on every held-out image: plain cross-entropy (comparable across models), accuracy, per-class
    accuracy and the confusion matrix."""
    model.eval()
    n = len(val_y)
    nb = math.ceil(n / cfg.batch_size)
    loss_sum = torch.zeros((), device=val_y.device)
    preds, confs = [], []
    watch.report(Phase.VALIDATING, 0, nb, epoch=epoch)
    with torch.no_grad():
        for b in range(nb):
            start, stop = b * cfg.batch_size, min((b + 1) * cfg.batch_size, n)
            idx = torch.arange(start, stop, device=val_y.device)  # made on each side: nothing moves across
            feats = features.val(torch.arange(start, stop), idx)
            with torch.autocast(**amp):
                logits = model.forward_from_features(feats).float()
            loss_sum += F.cross_entropy(logits, val_y[idx], reduction="sum")
            conf, top = logits.softmax(1).max(1)
            preds.append(top)
            confs.append(conf)
            watch.report(Phase.VALIDATING, b + 1, nb, epoch=epoch)
            watch.check()
    pred = torch.cat(preds)
    k = logits.shape[1]  # the head's classes
    confusion = torch.bincount(val_y * k + pred, minlength=k * k).view(k, k).cpu()
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    return {"loss": float(loss_sum) / n, "acc": float((pred == val_y).float().mean()),
            "per_class": [round(a, 6) for a in per_class], "confusion": confusion.tolist(), "pred": pred,
            "confidence": torch.cat(confs)}


def _write_metrics(out_dir: Path, history: list) -> None:
    with checkpoint.writing(out_dir), open(out_dir / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def _append_metrics(out_dir: Path, row: dict) -> None:
    with checkpoint.writing(out_dir), open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _summary(cfg: TrainConfig, state: _State, status: str, stopped_in: str | None = None) -> dict:
    """What a run ended with. A run stopped during setup has no counts or device info yet: those are None."""
    st, counts, info = state.progress, state.counts or {}, state.info or {}
    spec = catalogue.get(cfg.model)
    row = catalogue.paper_row(spec, cfg.dataset) if spec else None
    last = st.history[-1] if st.history else {}
    return {
        "model": cfg.model, "status": status, "stopped_in": stopped_in, "epochs_run": st.epoch, "epochs": cfg.epochs,
        "best_val_acc": st.best_acc if st.history else None, "best_epoch": st.best_epoch or None,
        "final_val_acc": last.get("val_acc"), "final_val_loss": last.get("val_loss"),
        "total_params": counts.get("total_params"), "trainable_params": counts.get("trainable_params"),
        "paper_name": spec.paper_name if spec else None,
        "paper_val_acc": row["val_acc"] if row else None,
        "paper_trainable_params": row["trainable_params"] if row else None,
        "device": info.get("device"), "precision": info.get("precision"),
        "feature_cache": info.get("feature_cache") or {"enabled": False, "reason": "stopped before it was set up"},
        "seconds": round(sum(r["seconds"] for r in st.history), 3),
        "images_per_s": round(float(np.mean([r["images_per_s"] for r in st.history])), 2) if st.history else None,
        "config": cfg.to_dict(),
    }
