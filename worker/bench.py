"""Benchmark: the engine against the loop a user would write, side by side.

    python -m worker.bench --data-dir /work/shared/data/cifar10-jpeg75 --images 520 --val-images 256 --epochs 6 \
        --device cpu                                                   # the CPU figures (DeiT-Ti, 224 px, fp32)
    python -m worker.bench --model deit_base_distilled_patch16_224 --images 10000 --val-images 2000 \
        --epochs 6 --device cuda --json bench-gpu.json                # the GPU figures
    python -m worker.bench --table1 --images 50000 --val-images 10000 --epochs 20 --device cuda \
        --json table1.json                                            # the whole of Table 1, engine only

Unset flags take the model's paper preset (core/config.py with its catalogue entry: batch 512, 224 px, fp32), on
generated CIFAR-sized images unless --data-dir is given (the first --images training and --val-images test images).

By default both sides run in this one process, interleaved epoch by epoch (the plain loop's epoch N, then the
engine's), so a machine shared with others slows both alike: the plain loop (PlainLoop: the same block trained,
the same batched preprocessing, a full forward of every training and validation image every epoch) and
`worker.engine.train.run` in the paper preset. Before and after them the raw forward limit: the frozen model's
`forward_features` in inference mode at `--limit-batch`, which no loop that sees each image once can beat. It prints
each epoch of both sides by wall and CPU time, epoch 1, the last epoch and the whole run (each side's setup
included) with their ratios; then, where the device runs bf16 natively (AVX-512 BF16 or AMX, an Ampere or later
GPU), the engine in bf16 beside fp32: its times and its effect on the best validation accuracy, a named deviation
from the paper's fp32. `--json OUT` writes every figure, with the chunk sizes the fill measured and chose.

`--separate` runs each side in its own process instead (peak memory its own), the reference being the tutorial
recipe: per-image PIL resize + ToTensor + Normalize in a DataLoader; the engine once per variant: "paper" is the
paper's preset as Reproduce Table 1 runs it (fp32 with TF32 on GPUs that have it); "fast" adds bf16 autocast;
"ieee" turns TF32 off (plain IEEE fp32, as the authors' GPUs computed: what TF32 buys).

`--table1` times the whole of Table 1 instead, engine only: every paper model (or `--models a,b`) in its paper
preset, one process each, on the same generated images. Per model it prints the frozen part's plain forward speed
at a fixed batch (`--frozen-batch`, by default the chunk size the run's fill measured and chose), epoch 1 (which
includes the frozen pass) and the later epochs, epoch 1's speed as a share of that forward, the time to the first
curve point, peak GPU and host memory, and a projection to the paper's full size (50,000 + 10,000 images, 20
epochs, linear in images and epochs) when the run was smaller; then the total.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core import catalogue

VARIANTS = {"paper": {}, "fast": {"precision": "bf16", "tf32": True}, "ieee": {"tf32": False}}
DEFAULT_VARIANTS = {"single": ["paper", "fast"], "table1": ["paper"]}
PAPER_SIZE = {"images": catalogue.DATASETS["cifar10"].train_size,  # CIFAR-10's full training and test sets
              "val_images": catalogue.DATASETS["cifar10"].val_size}


def _dataset(args):
    from worker.engine import data
    if args.data_dir:
        ds = data.load_cifar10(Path(args.data_dir))
        train = data.limit(ds.train, args.images)
        val = data.limit(ds.val, args.val_images)
    else:
        train, val = data.generated(args.images, args.val_images, seed=0)
    return data.Cifar10(train, val, tuple(f"c{i}" for i in range(10)), "generated")


def engine_config(args, variant: str = "paper"):
    """The model's paper preset, with the flags given and the variant's speed options."""
    from core.config import preset
    given = {"batch_size": args.batch_size, "image_size": args.image_size}
    return preset("paper", model=args.model, weights=args.weights, epochs=args.epochs, device=args.device, seed=0,
                  feature_cache=not args.no_cache, **{k: v for k, v in given.items() if v is not None},
                  **VARIANTS[variant])


def _device_info(device) -> dict:
    import timm
    import torch
    out = {"device": str(device), "torch": torch.__version__, "timm": timm.__version__,
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
    return out


def _peak(device) -> dict:
    import torch
    out = {"peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_allocated_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out["peak_gpu_reserved_mib"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)
    return out


def run_engine(args, variant: str) -> dict:
    from worker.engine import Callbacks, Paths, resolve_device, run

    cfg = engine_config(args, variant)
    first = []  # seconds from the start of the run to its first epoch point (the first curve point a user sees)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = run(cfg, Paths(Path("."), Path(out)), Callbacks(
            on_epoch=lambda _row: first or first.append(round(time.perf_counter() - t0, 3))), dataset=_dataset(args))
        total = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    cache = s["feature_cache"]
    return {"side": f"engine-{variant}", "config": {k: cfg.to_dict()[k] for k in (
                "model", "batch_size", "image_size", "precision", "tf32", "feature_cache", "cache_dtype")},
            "images_per_s": [r["images_per_s"] for r in rows], "epoch_s": [r["seconds"] for r in rows],
            "train_s": [r["train_seconds"] for r in rows],
            "val_s": [round(r["seconds"] - r["train_seconds"], 3) for r in rows],
            "wall_s": round(total, 2), "first_point_s": first[0] if first else None,
            "precision": s["precision"], "tf32": cfg.tf32,
            "feature_cache": cache.get("placement") if cache["enabled"] else "off",
            "feature_cache_gib": round(cache["bytes"] / 2**30, 3) if cache["enabled"] else None,
            "feature_cache_reason": cache["reason"], "best_val_acc": s["best_val_acc"],
            **_device_info(resolve_device(args.device)), **_peak(resolve_device(args.device))}


def plain_backbone(cfg):
    """The plain loop's model: the timm backbone with its classifier removed, everything frozen but the block the
    engine trains (the same one, by the same rule), and its data config and input size. Both plain loops build it."""
    from timm.data import resolve_model_data_config

    from worker.engine import create_backbone, plan_for

    model = create_backbone(cfg.model, cfg.weights, img_size=cfg.image_size)
    data_cfg = resolve_model_data_config(model)
    model.reset_classifier(0)
    for p in model.parameters():
        p.requires_grad = False
    for p in model.get_submodule(plan_for(cfg.model, model).unfreeze_from).parameters():
        p.requires_grad = True
    return model, data_cfg, cfg.image_size or data_cfg["input_size"][-1]


def run_reference(args) -> dict:
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from worker.engine import MLPHead, resolve_device

    cfg = engine_config(args)  # the same model, size and batch as the engine's paper variant
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model, data_cfg, size = plain_backbone(cfg)
    head = MLPHead(model.num_features)
    net = torch.nn.Sequential(model, head).to(device)
    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(data_cfg["mean"], data_cfg["std"])])
    ds = _dataset(args).train

    class Cifar(Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return tf(Image.fromarray(ds.images[i].transpose(1, 2, 0))), int(ds.labels[i])

    loader = DataLoader(Cifar(), batch_size=cfg.batch_size, shuffle=True, num_workers=args.ref_workers,
                        pin_memory=device.type == "cuda", persistent_workers=args.ref_workers > 0)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    ips, epoch_s = [], []
    t_all = time.perf_counter()
    for _epoch in range(args.ref_epochs or args.epochs):
        net.train()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        ips.append(round(len(ds) / dt, 2))
        epoch_s.append(round(dt, 3))
    return {"side": "reference", "config": {"model": args.model, "batch_size": cfg.batch_size, "image_size": size,
                                            "precision": "fp32", "workers": args.ref_workers},
            "images_per_s": ips, "epoch_s": epoch_s, "train_s": epoch_s,
            "wall_s": round(time.perf_counter() - t_all, 2), "precision": "fp32", "tf32": "PyTorch's defaults",
            **_device_info(device), **_peak(device)}


def summarize(results: dict, epochs: int) -> dict:
    """Figures derived from the sides: steady-state speeds, time to train all epochs, and ratios to the reference
    (whose epochs all cost the same, so its mean epoch stands for the ones it did not run)."""
    ref = results["reference"]
    ref_epoch = sum(ref["train_s"]) / len(ref["train_s"])
    out = {"reference_mean_images_per_s": round(sum(ref["images_per_s"]) / len(ref["images_per_s"]), 2),
           "reference_train_s_for_all_epochs": round(ref_epoch * epochs, 2), "engine": {}}
    for side, r in results.items():
        if side == "reference":
            continue
        later = r["images_per_s"][1:] or r["images_per_s"]
        train_total = sum(r["train_s"])
        out["engine"][side] = {
            "first_epoch_images_per_s": r["images_per_s"][0],
            "later_epochs_mean_images_per_s": round(sum(later) / len(later), 2),
            "train_s_all_epochs": round(train_total, 2), "train_and_val_s_all_epochs": round(sum(r["epoch_s"]), 2),
            "ratio_per_epoch": [round(ips / out["reference_mean_images_per_s"], 2) for ips in r["images_per_s"]],
            "speedup_all_epochs_training": round(ref_epoch * epochs / train_total, 2) if train_total else None}
    return out


# -- side by side in one process (the default) ---------------------------------------------------------------------
def bf16_native(device) -> bool:
    """Whether the device runs bf16 matrix work natively (AVX-512 BF16 or AMX on a CPU, compute capability 8.0+ on
    an NVIDIA GPU): only there is bf16 a speed option worth showing."""
    from worker.engine import bf16_supported
    return bf16_supported(device)


def _cpu_s() -> float:
    return time.process_time()  # this process's CPU time: what sharing the machine disturbs least


def _splits(args, cfg):
    """The training and validation images both sides use: the engine's own stratified subset of the real data
    (--data-dir), or generated images."""
    from worker.engine import data
    ds = _dataset(args)
    return ds, data.stratified_subset(ds.train, cfg.train_per_class, cfg.seed), data.limit(ds.val, cfg.val_limit)


class PlainLoop:
    """The loop a student writes, in the engine's process and on its images: a timm model whose parameters are frozen
    except the block the engine trains, the paper's head, Adam, a full forward pass for every batch and the whole
    validation set forwarded after every epoch. Its images are prepared as the engine prepares them (batched
    resize, normalization and flips on the device), so the comparison is the engine's caching and nothing else."""

    def __init__(self, args, cfg, train, val, device):
        import torch

        from worker.engine import MLPHead, Preprocess

        t0, c0 = time.perf_counter(), _cpu_s()
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, device
        model, data_cfg, size = plain_backbone(cfg)
        self.backbone = model.to(device)
        self.net = torch.nn.Sequential(model, MLPHead(model.num_features, cfg.head_hidden)).to(device)
        self.prep = Preprocess(size, data_cfg["mean"], data_cfg["std"], device)
        self.opt = torch.optim.Adam([p for p in self.net.parameters() if p.requires_grad], lr=cfg.lr)
        self.x = {"train": torch.from_numpy(train.images).to(device), "val": torch.from_numpy(val.images).to(device)}
        self.y = {"train": torch.from_numpy(train.labels).to(device), "val": torch.from_numpy(val.labels).to(device)}
        self.setup_s, self.setup_cpu_s = time.perf_counter() - t0, _cpu_s() - c0

    def epoch(self, epoch: int) -> dict:
        import torch
        import torch.nn.functional as F
        n, bs = len(self.y["train"]), self.cfg.batch_size
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        perm, flips = torch.randperm(n, generator=g), torch.rand(n, generator=g) < 0.5
        _sync(self.device)
        t0, c0 = time.perf_counter(), _cpu_s()
        self.net.train()
        for i in range(0, n, bs):
            idx = perm[i:i + bs].to(self.device)
            x = self.prep(self.x["train"][idx], flips[perm[i:i + bs]].to(self.device))
            loss = F.cross_entropy(self.net(x), self.y["train"][idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        _sync(self.device)
        train_s = time.perf_counter() - t0
        self.net.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, len(self.y["val"]), bs):
                logits = self.net(self.prep(self.x["val"][i:i + bs]))
                correct += int((logits.argmax(1) == self.y["val"][i:i + bs]).sum())
        _sync(self.device)
        return {"epoch_s": round(time.perf_counter() - t0, 3), "train_s": round(train_s, 3),
                "cpu_s": round(_cpu_s() - c0, 3), "val_acc": round(correct / len(self.y["val"]), 4)}

    def forward_limit(self, batch: int, images: int) -> dict:
        """The raw frozen-model speed here: `forward_features` in inference mode on `images` validation images at
        `batch`, after one warm-up batch. No loop that forwards each image once can beat it."""
        import torch
        x = self.x["val"]
        picks = torch.arange(images) % len(x)
        with torch.inference_mode():
            self.backbone.forward_features(self.prep(x[picks[:batch]]))
            _sync(self.device)
            t0 = time.perf_counter()
            for i in range(0, images, batch):
                self.backbone.forward_features(self.prep(x[picks[i:i + batch]]))
            _sync(self.device)
            dt = time.perf_counter() - t0
        return {"batch": batch, "images": images, "seconds": round(dt, 3), "images_per_s": round(images / dt, 2)}


def run_engine_beside(args, cfg, dataset, between=None) -> dict:
    """The engine's run of `cfg`; `between(epoch)` runs before each of its epochs (the plain loop's epoch of the same
    number, interleaved: both sides see the same moments of a shared machine), its time taken out of the engine's
    whole run."""
    from worker.engine import Callbacks, Paths, measured_chunks, run

    rows, aside, mark = [], [0.0], [0.0]

    def other(epoch: int) -> None:
        if between is not None and epoch <= cfg.epochs:
            t0 = time.perf_counter()
            between(epoch)
            aside[0] += time.perf_counter() - t0
        mark[0] = _cpu_s()  # the engine's next epoch starts about now (its CPU clock)

    def on_epoch(row: dict) -> None:
        rows.append({**row, "cpu_s": round(_cpu_s() - mark[0], 3)})
        print(f"  engine ({cfg.precision}) epoch {row['epoch']}: "
              f"{row['seconds']:.2f} s", flush=True)
        other(row["epoch"] + 1)

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = run(cfg, Paths(Path("."), Path(out)), Callbacks(on_info=lambda _info: other(1), on_epoch=on_epoch),
                dataset=dataset)
        wall = time.perf_counter() - t0 - aside[0]
    cache = s["feature_cache"]
    return {"precision": s["precision"], "tf32": cfg.tf32, "epoch_s": [r["seconds"] for r in rows],
            "train_s": [r["train_seconds"] for r in rows], "cpu_s": [r["cpu_s"] for r in rows],
            "val_acc": [r["val_acc"] for r in rows], "best_val_acc": s["best_val_acc"], "wall_s": round(wall, 2),
            "feature_cache": cache.get("placement") if cache["enabled"] else "off",
            "feature_cache_gib": round(cache["bytes"] / 2**30, 3) if cache["enabled"] else None,
            "chunk_sizes": measured_chunks()}


def side_by_side(args) -> dict:
    """The plain loop and the engine interleaved epoch by epoch in this process, the raw forward limit measured
    before and after them; then, where the device runs bf16 natively, the engine in bf16 (a named deviation)."""
    import torch

    from worker.engine import resolve_device

    cfg = engine_config(args, "paper")
    device = resolve_device(args.device)
    dataset, train, val = _splits(args, cfg)
    plain = PlainLoop(args, cfg, train, val, device)
    limit = [plain.forward_limit(args.limit_batch, args.limit_images)]
    plain_rows: list[dict] = []
    def plain_epoch(epoch: int) -> None:
        plain_rows.append(plain.epoch(epoch))
        print(f"  plain loop epoch {epoch}: {plain_rows[-1]['epoch_s']:.2f} s", flush=True)

    print(f"raw forward limit before: {limit[0]['images_per_s']:.1f} img/s", flush=True)
    engine = run_engine_beside(args, cfg, dataset, plain_epoch)
    limit.append(plain.forward_limit(args.limit_batch, args.limit_images))
    rate = sum(x["images_per_s"] for x in limit) / len(limit)
    ref = {"epoch_s": [r["epoch_s"] for r in plain_rows], "train_s": [r["train_s"] for r in plain_rows],
           "cpu_s": [r["cpu_s"] for r in plain_rows], "val_acc": [r["val_acc"] for r in plain_rows]}
    ref["setup_s"] = round(plain.setup_s, 3)
    ref["wall_s"] = round(plain.setup_s + sum(ref["epoch_s"]), 2)  # its model and data, then its epochs
    out = {"mode": "side-by-side", "model": cfg.model, "images": len(train), "val_images": len(val),
           "epochs": cfg.epochs, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
           "data": str(args.data_dir) if args.data_dir else "generated", "weights": cfg.weights,
           "forward_limit": {"runs": limit, "images_per_s": round(rate, 2),
                             "epoch_s": round((len(train) + len(val)) / rate, 3)},
           "plain": ref, "engine": engine, "environment": {**_device_info(device), "threads": torch.get_num_threads(),
                                                          "load_average": list(_load())}}
    out["summary"] = side_by_side_summary(out)
    native = bf16_native(device)
    out["bf16"] = {"native": native}
    if native and "fast" in args.variants:
        fast = run_engine_beside(args, engine_config(args, "fast"), dataset)
        out["bf16"].update(engine=fast, **bf16_deviation(engine, fast))
    return out


def _load() -> tuple:
    try:
        import os
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return ()


def side_by_side_summary(r: dict) -> dict:
    """Epoch 1, the last epoch and the whole run of both sides, their ratios (plain / engine: above 1 the engine is
    faster), epoch 1 against the forward limit's epoch, and the same ratios by CPU time."""
    plain, eng = r["plain"], r["engine"]

    def ratio(a, b):
        return round(a / b, 2) if b else None

    return {"epoch1": {"plain_s": plain["epoch_s"][0], "engine_s": eng["epoch_s"][0],
                       "speedup": ratio(plain["epoch_s"][0], eng["epoch_s"][0]),
                       "cpu_speedup": ratio(plain["cpu_s"][0], eng["cpu_s"][0]),
                       "forward_limit_s": r["forward_limit"]["epoch_s"],
                       "engine_vs_limit": ratio(r["forward_limit"]["epoch_s"], eng["epoch_s"][0])},
            "last": {"epoch": len(eng["epoch_s"]), "plain_s": plain["epoch_s"][-1], "engine_s": eng["epoch_s"][-1],
                     "speedup": ratio(plain["epoch_s"][-1], eng["epoch_s"][-1]),
                     "cpu_speedup": ratio(plain["cpu_s"][-1], eng["cpu_s"][-1])},
            "whole": {"plain_s": plain["wall_s"], "engine_s": eng["wall_s"],
                      "speedup": ratio(plain["wall_s"], eng["wall_s"]),
                      "cpu_speedup": ratio(sum(plain["cpu_s"]), sum(eng["cpu_s"]))},
            "per_epoch_speedup": [ratio(p, e) for p, e in zip(plain["epoch_s"], eng["epoch_s"])]}


def bf16_deviation(fp32: dict, bf16: dict) -> dict:
    """bf16 beside fp32, as a named deviation from the paper's numerics: its times and its measured effect on
    accuracy (the best validation accuracy of the same run in both)."""
    return {"deviation": "precision bf16 (the paper trained in fp32)",
            "epoch1_s": bf16["epoch_s"][0], "whole_s": bf16["wall_s"],
            "speedup_vs_fp32": round(fp32["wall_s"] / bf16["wall_s"], 2) if bf16["wall_s"] else None,
            "best_val_acc": bf16["best_val_acc"], "fp32_best_val_acc": fp32["best_val_acc"],
            "accuracy_effect": round(bf16["best_val_acc"] - fp32["best_val_acc"], 4)}


def print_side_by_side(r: dict) -> None:
    s, plain, eng = r["summary"], r["plain"], r["engine"]
    lim = r["forward_limit"]
    env = r["environment"]
    print(f"model {r['model']}, {r['images']} training + {r['val_images']} validation images ({r['data']}), "
          f"{r['epochs']} epochs, batch {r['batch_size']}, {r['image_size']} px, {eng['precision']}, device "
          f"{env['device']} ({env['threads']} threads, load average {', '.join(map(str, env['load_average']))}); "
          f"feature cache {eng['feature_cache']}")
    print(f"raw forward limit (forward_features, batch {lim['runs'][0]['batch']}, inference): "
          + " / ".join(f"{x['images_per_s']:.1f}" for x in lim["runs"]) + f" img/s (before / after): an epoch that "
          f"forwards every training and validation image once takes at least {lim['epoch_s']:.1f} s")
    print(f"{'epoch':>6} {'plain s':>9} {'engine s':>9} {'speed-up':>9} {'by CPU time':>12}")
    for i, (p, e) in enumerate(zip(plain["epoch_s"], eng["epoch_s"])):
        cpu = plain["cpu_s"][i] / eng["cpu_s"][i] if eng["cpu_s"][i] else float("nan")
        print(f"{i + 1:>6} {p:>9.2f} {e:>9.2f} {p / e:>8.2f}x {cpu:>11.2f}x")
    w = s["whole"]
    print(f"{'whole':>6} {w['plain_s']:>9.2f} {w['engine_s']:>9.2f} {w['speedup']:>8.2f}x {w['cpu_speedup']:>11.2f}x"
          "   (each side's setup included; the engine's checkpoints too)")
    e1 = s["epoch1"]
    print(f"epoch 1: {e1['speedup']}x the plain loop, {e1['engine_vs_limit']}x the forward limit's epoch; "
          f"epoch {s['last']['epoch']}: {s['last']['speedup']}x; whole run: {w['speedup']}x")
    b = r["bf16"]
    if not b["native"]:
        print("bf16: this device has no native bf16 (no AVX-512 BF16 or AMX; a GPU below compute capability 8.0): "
              "not timed (emulated bf16 runs slower than fp32)")
    elif "engine" in b:
        print(f"bf16 (deviation: {b['deviation']}): epoch 1 {b['epoch1_s']:.2f} s, whole run {b['whole_s']:.2f} s "
              f"({b['speedup_vs_fp32']}x fp32's); best validation accuracy {b['best_val_acc']:.4f} against fp32's "
              f"{b['fp32_best_val_acc']:.4f} ({b['accuracy_effect']:+.4f})")


# -- the whole of Table 1 (--table1) --------------------------------------------------------------------------------
def _sync(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_frozen_forward(cfg, batch: int, iters: int, warmup: int = 2) -> dict:
    """The frozen part's plain forward on one fixed batch, repeated: the speed the fill can at best reach (the
    issue's bar: epoch 1 at least half of it). Same preprocessing, precision and TF32 as the run; cuDNN picks its
    kernels once for the one shape (benchmark mode) during the warm-up batches, which are not timed."""
    import numpy as np
    import torch

    from worker.engine import DevicePolicy, build_model, fp32_math, resolve_device

    device = resolve_device(cfg.device)
    policy = DevicePolicy.for_device(device)
    torch.manual_seed(0)
    with device:  # initialized where it runs: NFNet-F6's 436M parameters take long to initialize on the CPU
        model, prep = build_model(cfg, policy)
    model.train()  # as in an epoch: the frozen part runs in inference mode whatever the mode
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch, 3, 32, 32), dtype=np.uint8))
    images = images.to(device)
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with fp32_math(cfg.tf32), torch.autocast(**policy.amp(cfg.precision)):
            for _ in range(warmup):
                model.frozen_features(prep(images))
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                model.frozen_features(prep(images))
            _sync(device)
            dt = time.perf_counter() - t0
    finally:
        torch.backends.cudnn.benchmark = saved
    return {"frozen_batch": batch, "frozen_iters": iters, "frozen_s": round(dt, 4),
            "frozen_images_per_s": round(batch * iters / dt, 2) if dt > 0 else None}


def projected_paper_s(r: dict, epochs: int, images: int, val_images: int, paper_epochs: int = 20) -> float:
    """A run's end-to-end time at the paper's size (50,000 + 10,000 images, 20 epochs), projected linearly from a
    smaller one: training time in proportion to the training images, validation to the validation images, the
    later epochs' mean for the epochs not run (epoch 1 where only one ran) and the setup (model, data, cache)
    as measured. An estimate for sizing a device session, not a measurement."""
    train_scale = PAPER_SIZE["images"] / images
    val_scale = PAPER_SIZE["val_images"] / val_images
    epoch = [t * train_scale + v * val_scale for t, v in zip(r["train_s"], r["val_s"])]
    later = epoch[1:] or epoch
    setup = r["first_point_s"] - r["epoch_s"][0]  # model, data, cache; with epoch 1's checkpoint
    between = r["wall_s"] - r["first_point_s"] - sum(r["epoch_s"][1:])  # the later epochs' checkpoints, the end
    per_later = between / (epochs - 1) if epochs > 1 else 0.0
    return round(setup + epoch[0] + (paper_epochs - 1) * (sum(later) / len(later) + per_later), 1)


def run_table1_model(args, variant: str) -> dict:
    """One Table 1 row: the engine's run of the model's paper preset, its peak memory read before anything else
    runs, then the plain frozen forward at a fixed batch (after the run: the run's epoch 1 gets no kernel choice
    made for it beforehand)."""
    import gc

    import torch

    from worker.engine import features

    res = run_engine(args, variant)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    cfg = engine_config(args, variant)
    measured = [p["size"] for p in features.measured_chunks()]  # the size the run's fill chose here
    batch = args.frozen_batch or min(measured[0] if measured else features.FROZEN_CHUNK, args.images)
    return {**res, **time_frozen_forward(cfg, batch, args.frozen_iters)}


def table1_row(r: dict, args) -> dict:
    """The figures the issue asks for, per model, from one row's run."""
    later = r["epoch_s"][1:]
    ips1 = r["images_per_s"][0]
    row = {"model": r["config"]["model"], "batch_size": r["config"]["batch_size"],
           "image_size": r["config"]["image_size"], "precision": r["precision"], "tf32": r["tf32"],
           "feature_cache": r["feature_cache"], "frozen_batch": r["frozen_batch"],
           "frozen_images_per_s": r["frozen_images_per_s"], "epoch1_s": r["epoch_s"][0],
           "epoch1_train_s": r["train_s"][0], "epoch1_images_per_s": ips1,
           "epoch1_vs_frozen": round(ips1 / r["frozen_images_per_s"], 3) if r["frozen_images_per_s"] else None,
           "later_epoch_s": round(sum(later) / len(later), 3) if later else None,
           "later_images_per_s": round(sum(r["images_per_s"][1:]) / len(later), 2) if later else None,
           "epoch_s": r["epoch_s"], "first_point_s": r["first_point_s"], "wall_s": r["wall_s"],
           "peak_host_rss_mib": r["peak_host_rss_mib"], "peak_gpu_allocated_mib": r.get("peak_gpu_allocated_mib"),
           "peak_gpu_reserved_mib": r.get("peak_gpu_reserved_mib"), "best_val_acc": r["best_val_acc"]}
    full = args.images >= PAPER_SIZE["images"] and args.val_images >= PAPER_SIZE["val_images"] and args.epochs >= 20
    row["projected_paper_s"] = r["wall_s"] if full else projected_paper_s(r, args.epochs, args.images,
                                                                          args.val_images)
    return row


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def print_table1(rows: list[dict], failed: dict, total: dict) -> None:
    head = (f"{'model':<32} {'batch':>5} {'frozen img/s':>12} {'epoch1 s':>9} {'ep1 img/s':>10} {'ep1/frozen':>10} "
            f"{'later s':>8} {'1st pt s':>8} {'wall s':>8} {'GPU MiB':>9} {'host MiB':>9} {'proj. s':>8}")
    print(head)
    for r in rows:
        print(f"{r['model']:<32} {r['batch_size']:>5} {_fmt(r['frozen_images_per_s']):>12} {r['epoch1_s']:>9.2f} "
              f"{r['epoch1_images_per_s']:>10.1f} {_fmt(r['epoch1_vs_frozen'], '.2f'):>10} "
              f"{_fmt(r['later_epoch_s'], '.2f'):>8} {_fmt(r['first_point_s'], '.2f'):>8} {r['wall_s']:>8.1f} "
              f"{_fmt(r['peak_gpu_reserved_mib'], '.0f'):>9} {r['peak_host_rss_mib']:>9.0f} "
              f"{r['projected_paper_s']:>8.1f}")
    for model, why in failed.items():
        print(f"{model:<32} FAILED: {why}")
    print(f"total: {total['engine_s']} s in the engine's runs, {total['elapsed_s']} s elapsed (processes, model "
          f"builds and frozen-forward timing included) for {len(rows)} models; projected at the paper's size: "
          f"{total['projected_paper_s']} s; first curve point of the table after {total['first_point_s']} s")


def table1_models(args) -> list[str]:
    """The models --table1 runs: --models, or the ten rows of the paper's Table 1 in its order."""
    from core import catalogue
    return args.models.split(",") if args.models else [r["model_id"] for r in catalogue.paper_table1()]


def table1_main(args, argv) -> int:
    """Every model of Table 1 in its paper preset, one after another as a Reproduce Table 1 group runs them, each
    in its own process; a model that fails is reported and the rest still run."""
    from worker.engine import resolve_device
    models = table1_models(args)
    variant = args.variants[0]
    rows, failed = [], {}
    t0 = time.perf_counter()
    first_point = None
    for model in models:
        started = time.perf_counter() - t0
        errors: list[str] = []
        res = _child(args, f"table1-{variant}", model, errors)
        if res is None:
            failed[model] = errors[0] if errors else "failed"
            continue
        rows.append(table1_row(res, args))
        if first_point is None and res["first_point_s"] is not None:
            first_point = round(started + res["first_point_s"], 2)  # the group's first job, from the table's start
        print(f"done {model}: {res['wall_s']} s", flush=True)
    total = {"engine_s": round(sum(r["wall_s"] for r in rows), 1),
             "elapsed_s": round(time.perf_counter() - t0, 1),
             "projected_paper_s": round(sum(r["projected_paper_s"] for r in rows), 1),
             "first_point_s": first_point}
    print(f"Table 1: {len(models)} models, {args.images} training + {args.val_images} validation images (generated), "
          f"{args.epochs} epochs, variant {variant}, weights {args.weights}, device {args.device}")
    print_table1(rows, failed, total)
    report = {"command": ["python", "-m", "worker.bench", *(argv if argv is not None else sys.argv[1:])],
              "mode": "table1", "variant": variant, "images": args.images, "val_images": args.val_images,
              "epochs": args.epochs, "weights": args.weights, "models": rows, "failed": failed, "total": total,
              "environment": _device_info(resolve_device(args.device))}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    print("TABLE1 " + json.dumps({"models": rows, "failed": failed, "total": total}))
    return 1 if failed else 0


def build_parser():
    from core.config import OPTIONS_BY_NAME
    p = argparse.ArgumentParser(prog="python -m worker.bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--images", type=int, default=1024, help="training images")
    p.add_argument("--val-images", type=int, default=128, help="validation images (the engine's epochs)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=None, help="default: the model's paper preset (512; Swin-B 256)")
    p.add_argument("--image-size", type=int, default=None, help="default: the paper preset's (224)")
    p.add_argument("--weights", default="none", help="none | hub | PATH (speed does not depend on the values)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder; default: generated images")
    p.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--ref-epochs", type=int, default=None,
                   help="epochs of the reference loop (default --epochs); its epochs all cost the same")
    p.add_argument("--no-cache", action="store_true", help="engine without its frozen-feature cache")
    p.add_argument("--separate", action="store_true",
                   help="each side in its own process (peak memory its own), the reference being the tutorial's "
                        "DataLoader loop, instead of the plain loop interleaved with the engine in one process")
    p.add_argument("--limit-batch", type=int, default=64, help="batch of the raw forward limit (side by side)")
    p.add_argument("--limit-images", type=int, default=256, help="images timed for the raw forward limit")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                   help="engine runs: paper = the preset (fp32, TF32 on GPUs that have it); fast = bf16 autocast; "
                        f"ieee = TF32 off ({OPTIONS_BY_NAME['precision'].name}, {OPTIONS_BY_NAME['tf32'].name} "
                        "options). Default: paper and fast; with --table1, paper")
    p.add_argument("--table1", action="store_true",
                   help="time the whole of Table 1 (engine only, one process per model) instead of one model")
    p.add_argument("--models", default=None, help="with --table1: comma-separated model ids (default: the ten "
                   "paper models, in Table 1's order)")
    p.add_argument("--frozen-batch", type=int, default=None,
                   help="with --table1: batch of the plain frozen forward (default: the chunk size the run's fill "
                        "measured and chose, or all the images where fewer)")
    p.add_argument("--frozen-iters", type=int, default=10, help="with --table1: timed frozen forward batches")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write every figure to this JSON file")
    p.add_argument("--side", default="all", help=argparse.SUPPRESS)  # one side in a child process
    return p


def side_by_side_main(args, argv) -> int:
    report = {"command": ["python", "-m", "worker.bench", *(argv if argv is not None else sys.argv[1:])],
              **side_by_side(args)}
    print_side_by_side(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    print("SIDE_BY_SIDE " + json.dumps(report["summary"]))
    return 0


def _child_argv(args, side: str, model: str) -> list[str]:
    argv = ["--model", model, "--images", str(args.images), "--val-images", str(args.val_images),
            "--epochs", str(args.epochs), "--weights", args.weights, "--device", args.device,
            "--ref-workers", str(args.ref_workers), "--frozen-iters", str(args.frozen_iters), "--side", side]
    for flag, value in (("--batch-size", args.batch_size), ("--image-size", args.image_size),
                        ("--data-dir", args.data_dir), ("--ref-epochs", args.ref_epochs),
                        ("--frozen-batch", args.frozen_batch)):
        if value is not None:
            argv += [flag, str(value)]
    if args.no_cache:
        argv.append("--no-cache")
    return argv


def _child(args, side: str, model: str | None = None, errors: list | None = None) -> dict | None:
    """One side in its own process (its peak memory its own). A failure prints the child's tail and, when
    `errors` is given, adds the tail's last line there."""
    out = subprocess.run([sys.executable, "-m", "worker.bench", *_child_argv(args, side, model or args.model)],
                         capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
        if errors is not None:
            tail = [x for x in out.stderr.splitlines() if x.strip()]
            errors.append(tail[-1] if tail else f"exit status {out.returncode}")
        return None
    return json.loads(line[7:])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.variants = args.variants or DEFAULT_VARIANTS["table1" if args.table1 else "single"]
    if args.side != "all":
        if args.side == "reference":
            res = run_reference(args)
        elif args.side.startswith("table1-"):
            res = run_table1_model(args, args.side.split("-", 1)[1])
        else:
            res = run_engine(args, args.side.split("-", 1)[1])
        print("RESULT " + json.dumps(res))
        return 0
    if args.table1:
        return table1_main(args, argv)
    if not args.separate:
        return side_by_side_main(args, argv)
    results = {}
    for side in ("reference", *(f"engine-{v}" for v in args.variants)):
        res = _child(args, side)
        if res is None:
            return 1
        results[side] = res
    summary = summarize(results, args.epochs)
    ref = results["reference"]
    engines = [results[f"engine-{v}"] for v in args.variants]
    cfg = engines[0]["config"]
    print(f"model {args.model}, {args.images} training images, {args.epochs} epochs, batch {cfg['batch_size']}, "
          f"{cfg['image_size']} px, device {engines[0]['device']}; feature cache {engines[0]['feature_cache']}")
    print(f"{'epoch':>5} {'reference img/s':>16}" + "".join(f" {e['side'] + ' img/s':>22} {'ratio':>7}"
                                                          for e in engines))
    ref_mean = summary["reference_mean_images_per_s"]
    for i in range(args.epochs):
        r = ref["images_per_s"][i] if i < len(ref["images_per_s"]) else None
        line = f"{i + 1:>5} " + (f"{r:>16.1f}" if r is not None else f"{'(' + format(ref_mean, '.1f') + ')':>16}")
        for e in engines:
            ips = e["images_per_s"][i]
            line += f" {ips:>22.1f} {ips / (r or ref_mean):>6.2f}x"
        print(line)
    for e in engines:
        s = summary["engine"][e["side"]]
        print(f"{e['side']} ({e['precision']}, TF32 {'on' if e['tf32'] else 'off'}): {s['train_s_all_epochs']} s "
              f"training for {args.epochs} epochs against the reference's {summary['reference_train_s_for_all_epochs']}"
              f" s ({s['speedup_all_epochs_training']}x); validation included: {s['train_and_val_s_all_epochs']} s")
        print(f"{e['side']}: first epoch point after {e['first_point_s']} s (setup, frozen features, epoch 1)")
    for r in (ref, *engines):
        mem = ", ".join(f"{k} {v}" for k, v in r.items() if k.startswith("peak"))
        print(f"peak memory {r['side']}: {mem}")
    report = {"command": ["python", "-m", "worker.bench", *(argv if argv is not None else sys.argv[1:])],
              "images": args.images, "val_images": args.val_images, "epochs": args.epochs, "sides": results,
              "summary": summary}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    print("JSON " + json.dumps({**results, "engine": engines[0]}))  # "engine": the first variant (older readers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
