"""Command line for the engine: `python -m worker.finetune --model M --data-dir D --out DIR [...]`.

Writes DIR/metrics.jsonl (one JSON object per epoch) and DIR/summary.json; shows a progress bar. `--describe`
prints a model's parameter counts and trainable modules without training or downloading; `--list-models` prints
the catalogue.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core import catalogue
from core.config import TrainConfig, preset
from worker.engine.data import DatasetError
from worker.engine.weights import WeightsError


def _int_or_none(s: str):
    return None if s.lower() in ("none", "all") else int(s)


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p = argparse.ArgumentParser(prog="python -m worker.finetune", description=__doc__.split("\n")[0])
    p.add_argument("--model", help=f"a catalogue id or any timm model name (default {d.model})")
    p.add_argument("--data-dir", type=Path, help="CIFAR-10: cifar-10-batches-py/ or cifar-10-python.tar.gz")
    p.add_argument("--out", type=Path, help="output folder (metrics.jsonl, summary.json, checkpoint.pt)")
    p.add_argument("--preset", default="paper", choices=["paper", "quick"])
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weights", help="hub | none | PATH of a .safetensors/.pth state_dict")
    p.add_argument("--weights-dir", type=Path, help="cache for hub weights")
    p.add_argument("--train-per-class", type=_int_or_none)
    p.add_argument("--val-limit", type=_int_or_none)
    p.add_argument("--image-size", type=int)
    p.add_argument("--pooling", choices=["auto", "model", "max", "avg"])
    p.add_argument("--no-hflip", action="store_true", help="turn off the paper's random horizontal flip")
    p.add_argument("--no-feature-cache", action="store_true", help="run the frozen part every step")
    p.add_argument("--cache-dir", type=Path, help="keep finished feature caches here for later runs")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"])
    p.add_argument("--device", default=None, help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int)
    p.add_argument("--download", action="store_true", help="download CIFAR-10 when the data dir has none")
    p.add_argument("--describe", action="store_true", help="print parameter counts and trainable modules")
    p.add_argument("--list-models", action="store_true", help="print the model catalogue as JSON")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    overrides = {}
    for name in ("model", "epochs", "batch_size", "lr", "weights", "train_per_class", "val_limit", "image_size",
                 "pooling", "precision", "device", "seed", "num_workers"):
        v = getattr(a, name)
        if v is not None:
            overrides[name] = v
    if a.no_hflip:
        overrides["hflip"] = False
    if a.no_feature_cache:
        overrides["feature_cache"] = False
    return preset(a.preset, **overrides)


def list_models() -> list[dict]:
    keys = ("id", "paper_name", "family", "paper_val_acc", "paper_trainable_params", "trainable_params",
            "total_params", "unfreeze_from", "note")
    return [{k: d[k] for k in keys} for d in map(catalogue.describe, catalogue.CATALOGUE.values())]


def describe(cfg: TrainConfig) -> dict:
    """Counts from the real architecture, built on the meta device: no weights, no download, no memory."""
    import timm
    import torch

    from worker.engine.model import SingleBlockModel, plan_for

    if not timm.is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}: not a timm model name (see --list-models)")
    with torch.device("meta"):
        backbone = timm.create_model(cfg.model, pretrained=False)
        m = SingleBlockModel(backbone, plan_for(cfg.model, backbone, cfg.pooling), cfg.head_hidden,
                             cfg.head_dropout)
    spec = catalogue.get(cfg.model)
    row = catalogue.paper_row(spec) if spec else None
    counts = m.count_params()
    return {"model": cfg.model, **counts, "unfreeze_from": m.plan.unfreeze_from, "rule": m.plan.arch,
            "pooling": m.plan.pooling, "trainable_modules": m.trainable_module_names(),
            "feature_cache_supported": m.cacheable,
            "paper_name": spec.paper_name if spec else None,
            "paper_trainable_params": row["trainable_params"] if row else None,
            "paper_count_includes_mlp_head": row["count_includes_mlp_head"] if row else None,
            "note": spec.note if spec else None}


class _Progress:
    """tqdm bar per epoch phase."""

    def __init__(self):
        from tqdm import tqdm
        self.tqdm, self.bar, self.key = tqdm, None, None

    def on_batch(self, e: dict) -> None:
        key = (e["epoch"], e["phase"])
        if key != self.key:
            if self.bar:
                self.bar.close()
            self.bar = self.tqdm(total=e["batches"], desc=f"epoch {e['epoch']} {e['phase']}", leave=False,
                                 file=sys.stderr)
            self.key = key
        self.bar.update(1)

    def on_epoch(self, row: dict) -> None:
        if self.bar:
            self.bar.close()
            self.bar, self.key = None, None
        print(json.dumps({k: row[k] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                                              "seconds", "images_per_s")}), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.list_models:
        print(json.dumps(list_models(), indent=2))
        return 0
    try:
        cfg = config_from_args(a)
        if a.describe:
            print(json.dumps(describe(cfg), indent=2))
            return 0
        if a.data_dir is None or a.out is None:
            print("error: --data-dir and --out are required to train", file=sys.stderr)
            return 2
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        from worker.engine.train import Callbacks, Paths, run

        bar = _Progress()
        summary = run(cfg, Paths(a.data_dir, a.out, a.weights_dir, a.cache_dir, allow_download=a.download),
                      Callbacks(on_batch=bar.on_batch, on_epoch=bar.on_epoch))
    except (ValueError, DatasetError, WeightsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
