"""The single-block fine-tuning run, top to bottom: data, model, feature cache, epochs, checkpoints.

Pure PyTorch + timm: no web or queue imports. The command line (finetune.py) and the Celery task (tasks.py)
both call `run()` and watch it through `Callbacks`.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from core import catalogue
from . import checkpoint
from . import data as cifar
from core.config import TrainConfig
from .features import _DTYPES, CacheDir, FeatureStore, cache_key, choose_placement
from .model import SingleBlockModel, plan_for
from .preprocess import Preprocess
from .schedule import PlateauLR
from .weights import create_backbone
from .weights import fingerprint as weights_fingerprint

log = logging.getLogger("blocklab.engine")

# Config fields that change nothing a run computes: a checkpoint resumes across them.
_RUNTIME_FIELDS = {"device", "num_workers", "stop_check_every", "epochs"}


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


@dataclass
class _State:
    epoch: int = 0
    history: list = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0


class StopRequested(Exception):
    pass


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device=cuda asked for, but PyTorch sees no CUDA GPU here")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:  # CPUs with AVX-512 BF16 or AMX run bf16 matrix work natively (oneDNN)
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False


def run(cfg: TrainConfig, paths: Paths, callbacks: Callbacks | None = None,
        dataset: cifar.Cifar10 | None = None) -> dict:
    cb = callbacks or Callbacks()
    out_dir = Path(paths.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and bf16_supported(device))
    amp = dict(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)
    torch.manual_seed(cfg.seed)

    # -- data: uint8 arrays on the training device; every transform is batched -------------------------------
    ds = dataset or cifar.load_cifar10(paths.data_dir, paths.allow_download, paths.download_url)
    train = cifar.stratified_subset(ds.train, cfg.train_per_class, cfg.seed)
    val = cifar.limit(ds.val, cfg.val_limit)
    train_x = torch.from_numpy(train.images).to(device)
    train_y = torch.from_numpy(train.labels).to(device)
    val_x = torch.from_numpy(val.images).to(device)
    val_y = torch.from_numpy(val.labels).to(device)

    # -- model -------------------------------------------------------------------------------------------------
    backbone = create_backbone(cfg.model, cfg.weights, paths.weights_dir, img_size=cfg.image_size)
    from timm.data import resolve_model_data_config
    data_cfg = resolve_model_data_config(backbone)
    image_size = cfg.image_size or data_cfg["input_size"][-1]
    model = SingleBlockModel(backbone, plan_for(cfg.model, backbone, cfg.pooling), cfg.head_hidden,
                             cfg.head_dropout).to(device)
    channels_last = device.type == "cuda" and model.plan.family == "cnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    prep = Preprocess(image_size, data_cfg["mean"], data_cfg["std"], device, channels_last)
    counts = model.count_params()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    scheduler = PlateauLR(optimizer, cfg.lr_factor, cfg.lr_patience, cfg.min_lr)

    # -- resume --------------------------------------------------------------------------------------------
    st = _State()
    ckpt = checkpoint.load(out_dir)
    if ckpt is not None:
        saved = {k: v for k, v in ckpt["config"].items() if k not in _RUNTIME_FIELDS}
        now = {k: v for k, v in cfg.to_dict().items() if k not in _RUNTIME_FIELDS}
        if saved != now:
            diff = sorted(k for k in now if saved.get(k) != now[k])
            raise ValueError(f"{out_dir} holds a checkpoint of another config (differs in {diff}); "
                             "use another output folder")
        model.load_state_dict(ckpt["model"], strict=False)
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        checkpoint.set_rng_state(ckpt["rng"])
        st = _State(ckpt["epoch"], list(ckpt["history"]), ckpt["best_acc"], ckpt["best_epoch"])
        log.info("resuming %s after epoch %d", out_dir, st.epoch)
    _write_metrics(out_dir, st.history)

    # -- frozen-feature cache ------------------------------------------------------------------------------
    stores, cache_info, cache_dir = _setup_cache(cfg, paths, model, prep, device, train, val, use_bf16)
    info = {**counts, "device": str(device), "precision": "bf16" if use_bf16 else "fp32",
            "image_size": image_size, "train_images": len(train), "val_images": len(val),
            "resumed_from_epoch": st.epoch, "feature_cache": cache_info}
    log.info("run: %s", json.dumps(info))
    if cb.on_info:
        cb.on_info(info)

    batches_seen = 0

    def check_stop():
        nonlocal batches_seen
        batches_seen += 1
        if cb.should_stop and batches_seen % max(cfg.stop_check_every, 1) == 0 and cb.should_stop():
            raise StopRequested

    # The flip state of every image in every remaining epoch is known now (seeded per epoch), so the cache
    # computes, at an image's first sight, exactly the states some epoch will use: one state for a 1-epoch
    # run, both for most images of a 20-epoch one.
    needed = torch.zeros(len(train), 2, dtype=torch.bool)
    for e in range(st.epoch + 1, cfg.epochs + 1):
        _perm, fl = _epoch_order(cfg, e, len(train))
        needed[torch.arange(len(train)), fl.long() if fl is not None else 0] = True

    def features_for(split_x, store, idx, flip, need=None):
        """The frozen part's output for a batch: from the cache (computing what is missing) or fresh."""
        if store is None:
            with torch.autocast(**amp):
                return model.frozen_features(prep(split_x[idx], flip))
        idx_cpu = idx.cpu()  # the fill bookkeeping lives on the CPU: one transfer per batch, not one per lookup
        for s in range(store.states):
            miss = store.missing(idx_cpu, torch.full_like(idx_cpu, s))
            if need is not None:
                miss &= need[idx_cpu, s]
            if miss.any():
                m_cpu = idx_cpu[miss]
                m_idx = m_cpu.to(idx.device)
                with torch.autocast(**amp):
                    f = model.frozen_features(prep(split_x[m_idx], torch.full_like(m_idx, s, dtype=torch.bool)))
                store.put(m_cpu, torch.full_like(m_cpu, s), f)
        state = flip.long().cpu() if flip is not None else torch.zeros_like(idx_cpu)
        return store.get(idx_cpu, state, torch.float32)

    # -- epochs --------------------------------------------------------------------------------------------
    status = "succeeded"
    try:
        for epoch in range(st.epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            lr = scheduler.lr
            perm, flips = _epoch_order(cfg, epoch, len(train))
            perm = perm.to(device)
            flips = flips.to(device) if flips is not None else None
            nb = math.ceil(len(train) / cfg.batch_size)
            model.train()
            loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
            for b in range(nb):
                idx = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
                feats = features_for(train_x, stores.get("train"), idx, flips[idx] if flips is not None else None,
                                     needed)
                with torch.autocast(**amp):
                    logits = model.forward_from_features(feats)
                    loss = F.cross_entropy(logits.float(), train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(idx)
                correct += (logits.argmax(1) == train_y[idx]).sum()
                if cb.on_batch:
                    cb.on_batch({"phase": "train", "epoch": epoch, "batch": b + 1, "batches": nb})
                check_stop()
            train_seconds = time.perf_counter() - t0
            ev = _evaluate(model, val_x, val_y, cfg, amp, lambda i: features_for(val_x, stores.get("val"), i, None),
                           cb, epoch, check_stop)
            seconds = time.perf_counter() - t0
            row = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / len(train), "train_acc": float(correct) / len(train),
                "val_loss": ev["loss"], "val_acc": ev["acc"], "lr": lr, "seconds": round(seconds, 3),
                "train_seconds": round(train_seconds, 3), "images_per_s": round(len(train) / train_seconds, 2),
                "per_class_acc": ev["per_class"], "confusion": ev["confusion"],
            }
            scheduler.step(ev["acc"])
            if ev["acc"] > st.best_acc:
                st.best_acc, st.best_epoch = ev["acc"], epoch
            st.epoch = epoch
            st.history.append(row)
            checkpoint.save(out_dir, {
                "config": cfg.to_dict(), "epoch": epoch, "model": model.trainable_state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": checkpoint.rng_state(), "history": st.history, "best_acc": st.best_acc,
                "best_epoch": st.best_epoch})
            _append_metrics(out_dir, row)
            log.info("epoch %d/%d: val_acc %.4f val_loss %.4f (%.1f img/s)", epoch, cfg.epochs, row["val_acc"],
                     row["val_loss"], row["images_per_s"])
            if cb.on_epoch:
                cb.on_epoch(row)
            if cb.should_stop and epoch < cfg.epochs and cb.should_stop():
                raise StopRequested
    except StopRequested:
        status = "stopped"
        log.info("stop requested: ending after epoch %d (checkpoint kept)", st.epoch)
    if cache_dir is not None:
        _persist_cache(cache_dir, stores, cache_info)

    summary = _summary(cfg, st, counts, info, status)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _epoch_order(cfg: TrainConfig, epoch: int, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The epoch's batch order and flip draws: a function of seed and epoch only, so resume repeats them."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    flips = torch.rand(n, generator=g) < 0.5 if cfg.hflip else None
    return perm, flips


def _evaluate(model, val_x, val_y, cfg, amp, features, cb, epoch, check_stop) -> dict:
    model.eval()
    n = len(val_y)
    nb = math.ceil(n / cfg.batch_size)
    loss_sum = torch.zeros((), device=val_x.device)
    preds = []
    with torch.no_grad():
        for b in range(nb):
            idx = torch.arange(b * cfg.batch_size, min((b + 1) * cfg.batch_size, n), device=val_x.device)
            feats = features(idx)
            with torch.autocast(**amp):
                logits = model.forward_from_features(feats).float()
            loss_sum += F.cross_entropy(logits, val_y[idx], reduction="sum")
            preds.append(logits.argmax(1))
            if cb.on_batch:
                cb.on_batch({"phase": "val", "epoch": epoch, "batch": b + 1, "batches": nb})
            check_stop()
    pred = torch.cat(preds)
    k = catalogue.NUM_CLASSES
    confusion = torch.bincount(val_y * k + pred, minlength=k * k).view(k, k).cpu()
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    return {"loss": float(loss_sum) / n, "acc": float((pred == val_y).float().mean()),
            "per_class": [round(a, 6) for a in per_class], "confusion": confusion.tolist()}


def _setup_cache(cfg, paths, model, prep, device, train, val, use_bf16) -> tuple[dict, dict, CacheDir | None]:
    """Decide whether and where frozen features are cached; reuse a finished cache of an earlier job."""
    if not cfg.feature_cache:
        return {}, {"enabled": False, "reason": "turned off (feature_cache=false)"}, None
    if not model.cacheable:
        reason = f"no tail adapter for {type(model.backbone).__name__}: full forward pass every step"
        log.info("feature cache off: %s", reason)
        return {}, {"enabled": False, "reason": reason}, None
    dtype = _DTYPES[cfg.cache_dtype]
    with torch.no_grad():
        probe = model.frozen_features(prep(torch.zeros(1, 3, 32, 32, dtype=torch.uint8, device=device)))
    shapes = [tuple(t.shape[1:]) for t in probe]
    states = 2 if cfg.hflip else 1
    need = (FeatureStore.bytes_needed(len(train), states, shapes, dtype)
            + FeatureStore.bytes_needed(len(val), 1, shapes, dtype))
    cache_root = Path(paths.cache_dir) if paths.cache_dir else None
    placement = choose_placement(need, device, cache_root)
    if placement is None:
        reason = f"{need / 2**30:.1f} GiB of features fit neither in memory nor on disk"
        log.warning("feature cache off: %s", reason)
        return {}, {"enabled": False, "reason": reason}, None
    key = cache_key(model=cfg.model, split=model.plan.unfreeze_from, cache_at=str(model.tail.cache_at),
                    weights=weights_fingerprint(model.backbone), train=cifar.fingerprint(train),
                    val=cifar.fingerprint(val), states=states, size=prep.image_size, dtype=cfg.cache_dtype,
                    bf16=use_bf16, mean=prep.mean.flatten().tolist(), std=prep.std.flatten().tolist())
    scratch = (cache_root / f".{key}.building") if cache_root else None
    stores = {
        "train": FeatureStore(len(train), states, shapes, dtype, placement, device,
                              scratch / "train" if scratch else None),
        "val": FeatureStore(len(val), 1, shapes, dtype, placement, device, scratch / "val" if scratch else None),
    }
    info = {"enabled": True, "key": key, "placement": placement.where, "reason": placement.reason,
            "bytes": need, "dtype": cfg.cache_dtype, "reused": False, "kept": False}
    cdir = CacheDir(cache_root, paths.cache_cap_bytes) if cache_root else None
    hit = cdir.lookup(key) if cdir else None
    if hit and all(s.load(hit / name) for name, s in stores.items()):
        info["reused"] = True
        log.info("feature cache: reusing %s", hit)
    info["loaded"] = {name: int(s.filled.sum()) for name, s in stores.items()}
    return stores, info, cdir


def _persist_cache(cdir: CacheDir, stores, info) -> None:
    """Keep the cache for later jobs when this run added to it (a later job computes only what is missing)."""
    if all(int(s.filled.sum()) == info["loaded"].get(name, 0) for name, s in stores.items()):
        return
    info["kept"] = cdir.store(info["key"], {"placement": info["placement"]}, stores) is not None


def _write_metrics(out_dir: Path, history: list) -> None:
    with open(out_dir / "metrics.jsonl", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")


def _append_metrics(out_dir: Path, row: dict) -> None:
    with open(out_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


def _summary(cfg: TrainConfig, st: _State, counts: dict, info: dict, status: str) -> dict:
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
