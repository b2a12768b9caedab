"""Command line for the engine: `python -m worker.finetune --model M --data-dir D --out DIR [...]`.

Writes DIR/metrics.jsonl (one JSON object per epoch) and DIR/summary.json; shows a progress bar. `--describe`
prints a model's method card as JSON (weights, input, numerics, trainable part, head, optimizer, its count against
Table 1, the known deviations from the authors' runs) with what the real architecture says, without training or
downloading; `--list-models` prints the catalogue.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from core import catalogue
from core.config import OPTIONS, PRESETS, TrainConfig, method_card, preset
from core.options import Option
from worker.engine.checkpoint import StorageError
from worker.engine.data import DatasetError
from worker.engine.train import Diverged
from worker.engine.weights import WeightsError


def _parse(o: Option):
    """The argparse type of an option: its declared type, with "none"/"all" for an empty value where allowed."""
    def parse(text: str):
        if o.nullable and text.lower() in ("none", "all", ""):
            return None
        try:
            value = o.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if o.type is int else 'a number'}")
        why = o.check(value)
        if why:
            raise argparse.ArgumentTypeError(f"{o.name} {why}")
        return value
    parse.__name__ = o.type.__name__
    return parse


def _help(o: Option) -> str:
    """Help text with the default, and the models whose paper preset differs."""
    default = o.none_means if o.default is None and o.none_means else o.default
    per_model = [f"{v} for {m}" for m, v in ((s.id, s.preset.get(o.name)) for s in catalogue.CATALOGUE.values())
                 if v is not None]
    return f"{o.help} (default: {default}{'; ' + ', '.join(per_model) if per_model else ''})".replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker.finetune", description=__doc__.split("\n")[0])
    run = p.add_argument_group("where")
    run.add_argument("--data-dir", type=Path, help="CIFAR-10: cifar-10-batches-py/ or cifar-10-python.tar.gz")
    run.add_argument("--out", type=Path, help="output folder (metrics.jsonl, summary.json, checkpoint.pt)")
    run.add_argument("--weights-dir", type=Path, help="cache for hub weights")
    run.add_argument("--cache-dir", type=Path, help="keep finished feature caches here for later runs")
    run.add_argument("--download", action="store_true", help="download CIFAR-10 when the data dir has none")
    run.add_argument("--preset", default="paper", choices=list(PRESETS), help="starting values (default: paper)")
    training = p.add_argument_group("training options (core/config.py; unset = the preset's value)")
    for o in OPTIONS:  # every option, from its one declaration
        flag = "--" + o.name.replace("_", "-")
        if o.type is bool:
            training.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_help(o))
        else:
            training.add_argument(flag, type=_parse(o), choices=o.choices, default=None, help=_help(o),
                                  metavar=None if o.choices else o.type.__name__.upper())
    info = p.add_argument_group("information")
    info.add_argument("--describe", action="store_true",
                      help="print the model's method card and parameter counts as JSON (no training, no download)")
    info.add_argument("--list-models", action="store_true", help="print the model catalogue as JSON")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    overrides = {o.name: getattr(a, o.name) for o in OPTIONS if getattr(a, o.name) is not None}
    return preset(a.preset, **overrides)


def list_models() -> list[dict]:
    keys = ("id", "paper_name", "family", "paper_val_acc", "paper_trainable_params", "trainable_params",
            "total_params", "unfreeze_from", "note")
    return [{k: d[k] for k in keys} for d in map(catalogue.describe, catalogue.CATALOGUE.values())]


def describe(cfg: TrainConfig) -> dict:
    """The method card (core.config.method_card) of `cfg`, with what the real architecture says beside it under
    "architecture": built on the meta device through the engine's own builder, so no weights, no download, no
    memory. For a catalogue model the two agree (tests/worker/test_catalogue.py proves the stored facts)."""
    import timm
    import torch

    from worker.engine.device import DevicePolicy
    from worker.engine.train import build_model

    if not timm.is_model(cfg.model):
        raise ValueError(f"unknown model {cfg.model!r}: not a timm model name (see --list-models)")
    meta = replace(cfg, weights="none")
    with torch.device("meta"):
        m, prep = build_model(meta, DevicePolicy(torch.device("meta")))
    bns = m.trainable_batchnorms()
    arch = {**m.count_params(), "unfreeze_from": m.plan.unfreeze_from, "rule": m.plan.arch,
            "pooling": m.plan.pooling, "trainable_modules": m.trainable_module_names(),
            "feature_cache_supported": m.cacheable, "image_size": prep.image_size,
            "pretrained_tag": m.backbone.pretrained_cfg.get("tag"),
            "native_size": m.backbone.pretrained_cfg["input_size"][-1], "trainable_batchnorms": len(bns),
            "bn_momentum": sorted({bn.momentum for bn in bns}), "num_features": m.backbone.num_features}
    if catalogue.get(cfg.model) is None:
        return {"model": cfg.model, "in_catalogue": False, "timm_id": cfg.model, **arch,
                "note": "not in the catalogue: no paper row, no method card", "architecture": arch}
    return {**method_card(cfg), "in_catalogue": True, "unfreeze_from": arch["unfreeze_from"], "rule": arch["rule"],
            "feature_cache_supported": arch["feature_cache_supported"], "architecture": arch}


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
    except (ValueError, DatasetError, WeightsError, StorageError, Diverged) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "config"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
