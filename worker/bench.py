"""Benchmark: the engine against the loop a user would write from the usual tutorials, side by side.

    python -m worker.bench --model deit_tiny_patch16_224 --images 1024 --epochs 3      # `make bench`

Both sides train the same model on the same images (generated CIFAR-sized images unless --data-dir is given),
on the same device, for the same epochs, each in its own process so peak memory is its own. The reference is
the tutorial recipe: per-image PIL resize + ToTensor + Normalize in a DataLoader, a timm model whose parameters
are frozen except the last block, a full forward pass every step, fp32. The engine is `worker.engine.train.run` with
its defaults (frozen-feature cache, batched preprocessing, bf16 where the hardware has it).
Prints images/s per training epoch for both, their ratio, and peak memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _dataset(args):
    from worker.engine import data
    if args.data_dir:
        ds = data.load_cifar10(Path(args.data_dir))
        train = data.limit(ds.train, args.images)
        val = data.limit(ds.val, args.val_images)
    else:
        train, val = data.generated(args.images, args.val_images, seed=0)
    return data.Cifar10(train, val, tuple(f"c{i}" for i in range(10)), "generated")


def _peak(device) -> dict:
    import torch
    out = {"peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def run_engine(args) -> dict:
    from core.config import TrainConfig
    from worker.engine.train import Paths, resolve_device, run

    cfg = TrainConfig(model=args.model, weights=args.weights, epochs=args.epochs, batch_size=args.batch_size,
                      image_size=args.image_size, device=args.device, seed=0, feature_cache=not args.no_cache,
                      precision=args.precision)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        s = run(cfg, Paths(Path("."), Path(out)), dataset=_dataset(args))
        total = time.perf_counter() - t0
        rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return {"side": "engine", "images_per_s": [r["images_per_s"] for r in rows], "wall_s": round(total, 2),
            "epoch_s": [r["seconds"] for r in rows], "precision": s["precision"],
            "feature_cache": s["feature_cache"].get("placement") if s["feature_cache"]["enabled"] else "off",
            **_peak(resolve_device(args.device))}


def run_reference(args) -> dict:
    import torch
    import torch.nn.functional as F
    from PIL import Image
    from timm.data import resolve_model_data_config
    from torch.utils.data import DataLoader, Dataset
    from torchvision import transforms

    from worker.engine.heads import MLPHead
    from worker.engine.model import plan_for
    from worker.engine.train import resolve_device
    from worker.engine.weights import create_backbone

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = create_backbone(args.model, args.weights, img_size=args.image_size)
    cfg = resolve_model_data_config(model)
    size = args.image_size or cfg["input_size"][-1]
    model.reset_classifier(0)
    for p in model.parameters():
        p.requires_grad = False
    last = model.get_submodule(plan_for(args.model, model).unfreeze_from)  # the same block the engine trains
    for p in last.parameters():
        p.requires_grad = True
    head = MLPHead(model.num_features)
    net = torch.nn.Sequential(model, head).to(device)
    tf = transforms.Compose([transforms.Resize(size, interpolation=transforms.InterpolationMode.BILINEAR),
                             transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                             transforms.Normalize(cfg["mean"], cfg["std"])])
    ds = _dataset(args).train

    class Cifar(Dataset):
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return tf(Image.fromarray(ds.images[i].transpose(1, 2, 0))), int(ds.labels[i])

    loader = DataLoader(Cifar(), batch_size=args.batch_size, shuffle=True, num_workers=args.ref_workers,
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
    return {"side": "reference", "images_per_s": ips, "epoch_s": epoch_s,
            "wall_s": round(time.perf_counter() - t_all, 2), "precision": "fp32", **_peak(device)}


def build_parser():
    p = argparse.ArgumentParser(prog="python -m worker.bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="deit_tiny_patch16_224")
    p.add_argument("--images", type=int, default=1024, help="training images")
    p.add_argument("--val-images", type=int, default=128, help="validation images (the engine's epochs)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--weights", default="none", help="none | hub | PATH (speed does not depend on the values)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", default=None, help="CIFAR-10 folder; default: generated images")
    p.add_argument("--ref-workers", type=int, default=2, help="DataLoader workers of the reference loop")
    p.add_argument("--ref-epochs", type=int, default=None,
                   help="epochs of the reference loop (default --epochs); its epochs all cost the same")
    p.add_argument("--no-cache", action="store_true", help="engine without its frozen-feature cache")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto", help="the engine's")
    p.add_argument("--side", choices=["both", "engine", "reference"], default="both")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.side != "both":
        res = run_engine(args) if args.side == "engine" else run_reference(args)
        print("RESULT " + json.dumps(res))
        return 0
    results = {}
    base = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--side")]
    for side in ("reference", "engine"):
        out = subprocess.run([sys.executable, "-m", "worker.bench", *base, "--side", side], capture_output=True,
                             text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if out.returncode or line is None:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            return 1
        results[side] = json.loads(line[7:])
    ref, eng = results["reference"], results["engine"]
    print(f"model {args.model}, {args.images} training images, {args.epochs} epochs, batch {args.batch_size}, "
          f"device {args.device}; engine precision {eng['precision']}, feature cache {eng['feature_cache']}")
    print(f"{'epoch':>5} {'reference img/s':>16} {'engine img/s':>13} {'ratio':>7}")
    ref_mean = sum(ref["images_per_s"]) / len(ref["images_per_s"])
    for i, e in enumerate(eng["images_per_s"], start=1):
        r = ref["images_per_s"][i - 1] if i <= len(ref["images_per_s"]) else None
        shown = f"{r:>16.1f}" if r is not None else f"{'(' + format(ref_mean, '.1f') + ')':>16}"
        print(f"{i:>5} {shown} {e:>13.1f} {e / (r or ref_mean):>6.2f}x")
    print(f"wall: reference {ref['wall_s']} s, engine {eng['wall_s']} s (engine includes validation each epoch)")
    for side, r in (("reference", ref), ("engine", eng)):
        mem = ", ".join(f"{k} {v}" for k, v in r.items() if k.startswith("peak"))
        print(f"peak memory {side}: {mem}")
    print("JSON " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
