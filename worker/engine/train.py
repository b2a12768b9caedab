"""The single-block fine-tuning run, top to bottom: data, model, feature cache, epochs, checkpoints.

Pure PyTorch + timm: no web or queue imports. The command line (finetune.py) and the Celery task (tasks.py)
both call `run()` and watch it through `Callbacks`. Whatever differs by device type (feature store, pinned memory,
channels_last, autocast dtype) is the run's DevicePolicy (device.py): tests pass one to force a GPU branch on the
CPU. Numerics are the paper's fp32 unless `precision` or `tf32` ask for speed.

The loss is cross-entropy (with label smoothing when set). With `head_l2` (the authors' Keras CNNs: 0.01) the
training loss adds Keras' L2 penalty on the head's kernels; `train_loss` and `val_loss` stay plain cross-entropy,
comparable across models, and `keras_train_loss` / `keras_val_loss` record what Keras would have printed (the
authors' logs, shared/paper/curves.csv, are such losses).
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import resolve_model_data_config

from core import catalogue
from core.config import TrainConfig
from core.protocol import epoch_row

from . import checkpoint
from . import data as cifar
from .device import DevicePolicy, fp32_math, resolve_device  # resolve_device: tasks.py and bench.py import it here
from .features import FrozenFeatures
from .model import SingleBlockModel, plan_for
from .preprocess import Preprocess
from .schedule import PlateauLR
from .weights import create_backbone

log = logging.getLogger("blocklab.engine")


@dataclass
class Callbacks:
    on_batch: Callable[[dict], None] | None = None  # {"phase", "epoch", "batch", "batches"}
    on_epoch: Callable[[dict], None] | None = None  # the epoch's metrics row
    should_stop: Callable[[], bool] | None = None  # polled every cfg.stop_check_every batches
    on_info: Callable[[dict], None] | None = None  # once, before the first epoch: counts, device, cache


@dataclass
class Paths:
    data_dir: Path
    out_dir: Path
    weights_dir: Path | None = None
    cache_dir: Path | None = None  # None: no feature cache kept across jobs
    cache_cap_bytes: int = 20 << 30
    allow_download: bool = False
    download_url: str = cifar.CIFAR10_URL


class StopRequested(Exception):
    pass


class Diverged(RuntimeError):
    """The loss stopped being a number: the run ends `failed`, and every earlier epoch is kept."""

    def __init__(self, epoch: int, nonfinite: dict):
        super().__init__(f"the loss became {next(iter(nonfinite.values()))} at epoch {epoch}; try a lower "
                         "learning rate")
        self.epoch, self.nonfinite = epoch, nonfinite


def run(cfg: TrainConfig, paths: Paths, callbacks: Callbacks | None = None,
        dataset: cifar.Cifar10 | None = None, policy: DevicePolicy | None = None) -> dict:
    """Train `cfg` and return its summary. `policy` defaults to what the device offers (device.py)."""
    policy = policy or DevicePolicy.for_device(resolve_device(cfg.device))
    with fp32_math(cfg.tf32):
        return _run(cfg, paths, callbacks or Callbacks(), dataset, policy)


def _run(cfg: TrainConfig, paths: Paths, cb: Callbacks, dataset: cifar.Cifar10 | None,
         policy: DevicePolicy) -> dict:
    out_dir = Path(paths.out_dir)
    with checkpoint.writing(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_metrics(out_dir, [])  # a folder that cannot take files says so now, not after an epoch
    device = policy.device
    amp = policy.amp(cfg.precision)
    torch.manual_seed(cfg.seed)

    # -- data: uint8 arrays on the training device; every transform is batched -------------------------------
    train, val = _load_data(cfg, paths, dataset)
    images = {"train": torch.from_numpy(train.images).to(device), "val": torch.from_numpy(val.images).to(device)}
    labels = {"train": torch.from_numpy(train.labels).to(device), "val": torch.from_numpy(val.labels).to(device)}

    # -- model, and the frozen part's features (keyed on the frozen part only: a resumed run finds its cache) ----
    model, prep = build_model(cfg, policy, paths.weights_dir)
    features = FrozenFeatures.setup(cfg, paths, model, prep, policy, amp, train, val, images,
                                    {"train": cifar.fingerprint(train), "val": cifar.fingerprint(val)})
    optimizer = make_optimizer(model, cfg)
    scheduler = PlateauLR(optimizer, cfg.lr_factor, cfg.lr_patience, cfg.min_lr)
    progress = checkpoint.restore(out_dir, cfg, model, optimizer, scheduler)
    if progress.epoch:
        log.info("resuming %s after epoch %d", out_dir, progress.epoch)
    _write_metrics(out_dir, progress.history)
    counts = model.count_params()
    info = {**counts, "device": str(device), "precision": "bf16" if amp["enabled"] else "fp32", "tf32": cfg.tf32,
            "channels_last": prep.channels_last,
            "image_size": prep.image_size, "train_images": len(train), "val_images": len(val),
            "resumed_from_epoch": progress.epoch, "feature_cache": features.info}
    log.info("run: %s", json.dumps(info))
    if cb.on_info:
        cb.on_info(info)

    # The flip state of every image in every remaining epoch is known now (seeded per epoch), so the cache
    # computes, at an image's first sight, exactly the states some epoch will use.
    remaining = range(progress.epoch + 1, cfg.epochs + 1)
    features.plan(_epoch_order(cfg, e, len(train))[1] for e in remaining)
    stop = _StopCheck(cb.should_stop, cfg.stop_check_every)
    status = "succeeded"
    try:
        for epoch in remaining:
            row = _epoch(model, optimizer, scheduler.lr, features, labels, cfg, amp, epoch, cb, stop)
            _append_metrics(out_dir, row)
            if row["nonfinite"]:  # a diverged epoch is data, but not a state to resume from
                if cb.on_epoch:
                    cb.on_epoch(row)
                raise Diverged(epoch, row["nonfinite"])
            scheduler.step(row["val_acc"])
            progress.record(row)
            checkpoint.save(out_dir, cfg, progress, model, optimizer, scheduler)
            log.info("epoch %d/%d: val_acc %.4f val_loss %.4f (%.1f img/s)", epoch, cfg.epochs, row["val_acc"],
                     row["val_loss"], row["images_per_s"])
            if cb.on_epoch:
                cb.on_epoch(row)
            if cb.should_stop and epoch < cfg.epochs and cb.should_stop():
                raise StopRequested
    except StopRequested:
        status = "stopped"
        log.info("stop requested: ending after epoch %d (checkpoint kept)", progress.epoch)
    features.persist()

    summary = _summary(cfg, progress, counts, info, status)
    with checkpoint.writing(out_dir):
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _load_data(cfg: TrainConfig, paths: Paths, dataset: cifar.Cifar10 | None) -> tuple[cifar.Split, cifar.Split]:
    """The training subset (stratified and seeded) and the validation images the config asks for."""
    ds = dataset or cifar.load_cifar10(paths.data_dir, paths.allow_download, paths.download_url)
    return cifar.stratified_subset(ds.train, cfg.train_per_class, cfg.seed), cifar.limit(ds.val, cfg.val_limit)


def _epoch(model, optimizer, lr: float, features, labels: dict, cfg: TrainConfig, amp, epoch: int, cb,
           stop) -> dict:
    """One epoch, training then validation, as the protocol's epoch row."""
    t0 = time.perf_counter()
    tr = _train_epoch(model, optimizer, features, labels["train"], cfg, amp, epoch, cb, stop)
    train_seconds = time.perf_counter() - t0
    ev = _evaluate(model, features, labels["val"], cfg, amp, cb, epoch, stop)
    seconds = time.perf_counter() - t0
    with torch.no_grad():  # the penalty at the epoch's end weights, as Keras adds it to its val_loss
        penalty = float(_l2_penalty(model, cfg))
    return epoch_row(epoch=epoch, train_loss=tr["loss"], train_acc=tr["acc"], val_loss=ev["loss"], val_acc=ev["acc"],
                     lr=lr, seconds=round(seconds, 3), keras_train_loss=tr["keras_loss"],
                     keras_val_loss=ev["loss"] + penalty if cfg.head_l2 else None,
                     train_seconds=round(train_seconds, 3),
                     images_per_s=round(len(labels["train"]) / train_seconds, 2), per_class_acc=ev["per_class"],
                     confusion=ev["confusion"])


def build_model(cfg: TrainConfig, policy: DevicePolicy, weights_dir: Path | None = None
                ) -> tuple[SingleBlockModel, Preprocess]:
    """The backbone with its last block unfrozen and the paper's head, and the preprocessing its weights expect.

    The paper upsamples every model to 224 (the preset's `image_size`), whatever size its weights were trained at
    (NFNet-F6 448, EfficientNetV2-L 384): transformers are built for that size (timm resamples their position
    embeddings), CNNs take it as it is. Works under `torch.device("meta")` with weights="none" (tests build every
    paper model that way).
    """
    backbone = create_backbone(cfg.model, cfg.weights, weights_dir, img_size=cfg.image_size)
    data_cfg = resolve_model_data_config(backbone)
    image_size = cfg.image_size or data_cfg["input_size"][-1]
    model = SingleBlockModel(backbone, plan_for(cfg.model, backbone, cfg.pooling), cfg.head_hidden,
                             cfg.head_dropout, head_init=cfg.head_init, bn_momentum=cfg.bn_momentum).to(policy.device)
    channels_last = policy.channels_last and model.plan.family == "cnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, Preprocess(image_size, data_cfg["mean"], data_cfg["std"], policy.device, channels_last)


def make_optimizer(model: SingleBlockModel, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam on the trainable parameters, with the preset's epsilon (the authors' Keras CNNs: Keras' 1e-7)."""
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, eps=cfg.adam_eps)


def _l2_penalty(model: SingleBlockModel, cfg: TrainConfig) -> torch.Tensor:
    """Keras' kernel_regularizer=l2(head_l2) on both Dense layers of the head: head_l2 x the sum of squared kernel
    weights (0 when off)."""
    if not cfg.head_l2:
        return torch.zeros(())
    return cfg.head_l2 * model.head_l2_term()


class _StopCheck:
    """Asks the stop callback every `every` batches; raises StopRequested when it says so."""

    def __init__(self, should_stop: Callable[[], bool] | None, every: int):
        self.should_stop, self.every, self.batches = should_stop, max(every, 1), 0

    def __call__(self) -> None:
        self.batches += 1
        if self.should_stop and self.batches % self.every == 0 and self.should_stop():
            raise StopRequested


def _train_epoch(model, optimizer, features: FrozenFeatures, y, cfg: TrainConfig, amp, epoch, cb, stop) -> dict:
    """One pass over the training images in the epoch's seeded order: mean cross-entropy, accuracy, and (with an
    L2 penalty) the mean of cross-entropy plus penalty, the loss Keras prints."""
    n = len(y)
    perm, flips = _epoch_order(cfg, epoch, n)
    perm = perm.to(y.device)
    flips = flips.to(y.device) if flips is not None else None
    nb = math.ceil(n / cfg.batch_size)
    model.train()
    zero = torch.zeros((), device=y.device)
    loss_sum, keras_sum, correct = zero.clone(), zero.clone(), zero.clone()
    for b in range(nb):
        idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
        feats = features.train(idx, flips[idx] if flips is not None else None)
        with torch.autocast(**amp):
            logits = model.forward_from_features(feats)
            loss = F.cross_entropy(logits.float(), y[idx], label_smoothing=cfg.label_smoothing)
        total = loss + _l2_penalty(model, cfg).to(loss.device) if cfg.head_l2 else loss  # the penalty in fp32
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(idx)
        keras_sum += total.detach() * len(idx)  # Keras' progress bar: the batch-size-weighted mean of its loss
        correct += (logits.argmax(1) == y[idx]).sum()
        if cb.on_batch:
            cb.on_batch({"phase": "train", "epoch": epoch, "batch": b + 1, "batches": nb})
        stop()
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n,
            "keras_loss": float(keras_sum) / n if cfg.head_l2 else None}


def _epoch_order(cfg: TrainConfig, epoch: int, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's batch order and flip draws: a function of seed and epoch only, so resume repeats them."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if cfg.hflip else None
    return perm, flips


def _evaluate(model, features: FrozenFeatures, val_y, cfg: TrainConfig, amp, cb, epoch, stop) -> dict:
    """Validation on every held-out image: plain cross-entropy (comparable across models), accuracy, per-class
    accuracy and the confusion matrix."""
    model.eval()
    n = len(val_y)
    nb = math.ceil(n / cfg.batch_size)
    loss_sum = torch.zeros((), device=val_y.device)
    preds = []
    with torch.no_grad():
        for b in range(nb):
            idx = torch.arange(b * cfg.batch_size, min((b + 1) * cfg.batch_size, n), device=val_y.device)
            feats = features.val(idx)
            with torch.autocast(**amp):
                logits = model.forward_from_features(feats).float()
            loss_sum += F.cross_entropy(logits, val_y[idx], reduction="sum")
            preds.append(logits.argmax(1))
            if cb.on_batch:
                cb.on_batch({"phase": "val", "epoch": epoch, "batch": b + 1, "batches": nb})
            stop()
    pred = torch.cat(preds)
    k = catalogue.NUM_CLASSES
    confusion = torch.bincount(val_y * k + pred, minlength=k * k).view(k, k).cpu()
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    return {"loss": float(loss_sum) / n, "acc": float((pred == val_y).float().mean()),
            "per_class": [round(a, 6) for a in per_class], "confusion": confusion.tolist()}


def _write_metrics(out_dir: Path, history: list) -> None:
    with checkpoint.writing(out_dir), open(out_dir / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def _append_metrics(out_dir: Path, row: dict) -> None:
    with checkpoint.writing(out_dir), open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _summary(cfg: TrainConfig, st: checkpoint.Progress, counts: dict, info: dict, status: str) -> dict:
    spec = catalogue.get(cfg.model)
    row = catalogue.paper_row(spec) if spec else None
    last = st.history[-1] if st.history else {}
    return {
        "model": cfg.model, "status": status, "epochs_run": st.epoch, "epochs": cfg.epochs,
        "best_val_acc": st.best_acc if st.history else None, "best_epoch": st.best_epoch or None,
        "final_val_acc": last.get("val_acc"), "final_val_loss": last.get("val_loss"),
        "total_params": counts["total_params"], "trainable_params": counts["trainable_params"],
        "paper_name": spec.paper_name if spec else None,
        "paper_val_acc": row["val_acc"] if row else None,
        "paper_trainable_params": row["trainable_params"] if row else None,
        "device": info["device"], "precision": info["precision"],
        "feature_cache": info["feature_cache"],
        "seconds": round(sum(r["seconds"] for r in st.history), 3),
        "images_per_s": round(float(np.mean([r["images_per_s"] for r in st.history])), 2) if st.history else None,
        "config": cfg.to_dict(),
    }
