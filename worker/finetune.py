"""Command line for the engine: `python -m worker.finetune --model M --data-dir D --out DIR [...]`.

Writes DIR/metrics.jsonl (one JSON object per epoch), DIR/summary.json and DIR/checkpoint.pt. While it runs,
stderr shows one progress bar per phase (downloading, loading, frozen features, training, validating) and one line
per finished epoch, nothing else (log lines go through the bars; `--verbose` shows the engine's INFO lines); the
end is a short readable summary: best accuracy against the paper's, epochs, time. `--json` prints only the summary
as JSON on stdout, for machines. Run again into the same DIR, it says whether it resumes (from which epoch) or is
already complete (then it trains nothing). Ctrl-C stops after the current batch, keeping the last finished epoch.

`--describe` prints a model's method card as JSON (weights, input, numerics, trainable part, head, optimizer, its
count against Table 1, the known deviations from the authors' runs) with what the real architecture says, without
training or downloading; `--list-models` prints the catalogue.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from core import catalogue
from core.config import OPTIONS, PRESETS, TrainConfig, method_card, preset
from core.options import Option
from core.protocol import RunStatus
from worker.engine import USER_ERRORS, Terms, user_error_text


class FlagTerms(Terms):
    """The command line's terms for a fix: a flag (`--weights none`), a folder by its flag (`--weights-dir`)."""
    FOLDERS = {"weights_dir": "--weights-dir", "data_dir": "--data-dir", "out": "--out", "cache_dir": "--cache-dir"}

    def option(self, name, value):
        flag = "--" + name.replace("_", "-")
        return f"pass {flag}" if value is True else f"pass {flag} {value}"

    def folder(self, name, path):
        flag = self.FOLDERS.get(name, name)
        return f"{path} ({flag})" if path is not None else f"another folder ({flag})"


FLAGS = FlagTerms()


def _parse(o: Option):
    """The argparse type of an option: its declared type, with "none"/"all" for an empty value where allowed."""
    def parse(text: str):
        if o.nullable and text.lower() in ("none", "all", ""):
            return None
        try:
            value = o.type(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if o.type is int else 'a number'}") from err
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
    run.add_argument("--data-dir", type=Path, metavar="DIR",
                     help="the dataset: a folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz (CIFAR-100: "
                          "cifar-100-python/ or cifar-100-python.tar.gz; --dataset folder:NAME: folders/NAME/) "
                          "(required to train; default: none)")
    run.add_argument("--out", type=Path, metavar="DIR",
                     help="output folder: metrics.jsonl, summary.json, checkpoint.pt; an existing one is resumed "
                          "(required to train; default: none)")
    run.add_argument("--weights-dir", type=Path, metavar="DIR",
                     help="the weights folder: --weights local reads DIR/<model>.safetensors (or .pth), hub downloads "
                          "are cached in DIR/hub (default: the lab's, BLOCKLAB_WEIGHTS_DIR or <BLOCKLAB_HOME>/weights, "
                          "for local files; Hugging Face's own cache, ~/.cache/huggingface, for the hub)")
    run.add_argument("--cache-dir", type=Path, metavar="DIR",
                     help="keep finished frozen-feature caches here for later runs (default: none, not kept)")
    run.add_argument("--download", action="store_true",
                     help="download the dataset (CIFAR-10 163 MB, CIFAR-100 161 MB) from its official mirror when "
                          "the data dir has none, md5-checked (default: off)")
    run.add_argument("--teacher-dir", type=Path, metavar="DIR",
                     help="with --teacher N: the teacher run's --out folder; its predictions are stored there "
                          "(default: none)")
    run.add_argument("--preset", default="paper", choices=list(PRESETS),
                     help="starting values: paper = the paper's recipe, quick = a few-minute CPU check "
                          "(default: paper)")
    training = p.add_argument_group("training options (core/config.py; unset = the preset's value)")
    for o in OPTIONS:  # every option, from its one declaration
        flag = "--" + o.name.replace("_", "-")
        if o.type is bool:
            training.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=_help(o))
        else:
            # Absent = the preset's value; "all"/"none" = None, which differs from the preset where its default
            # is not None (--trainable-blocks all): so an absent flag leaves no attribute at all.
            choices = None if o.pattern else o.choices  # folder:NAME: the option's own check says what is allowed
            training.add_argument(flag, type=_parse(o), choices=choices, default=argparse.SUPPRESS, help=_help(o),
                                  metavar=None if choices else o.type.__name__.upper())
    output = p.add_argument_group("output")
    output.add_argument("--gallery", type=Path, metavar="FILE",
                        help="write the best epoch's misclassified validation images as one self-contained HTML "
                             "file (default: none)")
    output.add_argument("--json", action="store_true",
                        help="print only the summary, as JSON on stdout; no bars or epoch lines (default: off)")
    output.add_argument("--verbose", action="store_true",
                        help="also show the engine's log lines (printed above the bars) (default: off)")
    info = p.add_argument_group("information")
    info.add_argument("--describe", action="store_true",
                      help="print the model's method card and parameter counts as JSON (no training, no download) "
                           "(default: off)")
    info.add_argument("--list-models", action="store_true",
                      help="print the model catalogue as JSON (default: off)")
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    overrides = {o.name: getattr(a, o.name) for o in OPTIONS
                 if hasattr(a, o.name) and (o.type is not bool or getattr(a, o.name) is not None)}
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

    from worker.engine import DevicePolicy, build_model

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
            "bn_momentum": sorted({bn.momentum for bn in bns}), "num_features": m.backbone.num_features,
            **_depth(m)}
    if catalogue.get(cfg.model) is None:  # the generic card, with what the architecture says filled in
        return {**method_card(cfg, built={**arch, "heads": len(m.heads)}), "rule": arch["rule"],
                "feature_cache_supported": arch["feature_cache_supported"], "architecture": arch}
    card = method_card(cfg)
    if card.get("trainable_params") is None:  # a depth the catalogue cannot count without the architecture
        card.update(trainable_params=arch["trainable_params"], trainable_modules=arch["trainable_modules"])
    return {**card, "in_catalogue": True, "unfreeze_from": arch["unfreeze_from"], "rule": arch["rule"],
            "feature_cache_supported": arch["feature_cache_supported"], "trainable_blocks": arch["trainable_blocks"],
            "blocks": arch["blocks"], "architecture": arch}


def _depth(m) -> dict:
    """The depth as the architecture has it: the block list's length, which blocks train, what the cache holds."""
    return {"trainable_blocks": "all" if m.trainable_blocks is None else m.trainable_blocks,
            "blocks": len(m.blocks), "block_list": [m.blocks[0], m.blocks[-1]] if m.blocks else [],
            "trainable_block_names": m.trainable_block_names,
            "feature_cache": m.cached_what if m.cacheable else m.cache_reason}


_PHASE_TEXT = {"downloading": "downloading", "loading": "loading data", "features": "frozen features",
               "training": "training", "validating": "validating"}


class Bars:
    """One tqdm bar per phase (per epoch, split or file): a new phase closes the last bar first, so two bars
    never share the terminal; log records and epoch lines are written above the bar (tqdm.write)."""

    def __init__(self, out=None, auto: bool = False):
        if auto:  # a notebook: tqdm's widget bar where ipywidgets is installed, its text bar elsewhere
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm
        self.tqdm, self.out = tqdm, out or sys.stderr
        self.bar, self.key, self.epochs = None, None, None

    def write(self, text: str) -> None:
        self.tqdm.write(text, file=self.out)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.key = None, None

    def on_progress(self, p: dict) -> None:
        phase = p["phase"]
        if phase not in _PHASE_TEXT:  # starting: a moment, no bar
            return
        key = (phase, p.get("epoch"), p.get("split"), p.get("what"))
        if key != self.key:
            self.close()
            desc = _PHASE_TEXT[phase]
            if p.get("epoch") is not None:
                desc = f"epoch {p['epoch']} {desc}"
            if p.get("split"):
                desc += f" ({p['split']})"
            if p.get("what"):
                desc += f" {p['what']}"
            size = ({"unit": "B", "unit_scale": True, "unit_divisor": 1024} if phase == "downloading" else
                    {"unit": " batch" if phase in ("training", "validating") else " img"})
            self.bar = self.tqdm(total=p.get("total"), desc=desc, leave=False, file=self.out, dynamic_ncols=True,
                                 **size)
            self.key = key
        if p.get("total") is not None and self.bar.total != p["total"]:
            self.bar.total = p["total"]
        self.bar.update(max(0, p["done"] - self.bar.n))

    def on_epoch(self, row: dict) -> None:
        self.close()
        self.write(epoch_line(row, self.epochs))


class _BarLog(logging.Handler):
    """Log records printed through the bars (never in the middle of one)."""

    def __init__(self, bars: Bars):
        super().__init__()
        self.bars = bars

    def emit(self, record):
        self.bars.write(self.format(record))


def _num(v, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def epoch_line(row: dict, epochs: int | None = None) -> str:
    of = f"/{epochs}" if epochs else ""
    return (f"epoch {row['epoch']}{of}: train loss {_num(row['train_loss'], '.4f')} acc {_num(row['train_acc'], '.4f')}"
            f" | val loss {_num(row['val_loss'], '.4f')} acc {_num(row['val_acc'], '.4f')} | lr {row['lr']:g} | "
            f"{_num(row['seconds'], '.1f')} s, {_num(row['images_per_s'], '.0f')} img/s")


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = round(s)
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def summary_text(summary: dict, out: Path) -> str:
    """The end of a run for a person: outcome, best accuracy against the paper's, epochs, time, where it is."""
    status = {RunStatus.SUCCEEDED: "finished", RunStatus.STOPPED: "stopped", RunStatus.COMPLETE: "already complete"}.get(
        summary["status"], summary["status"])
    lines = [f"{summary['model']}: {status}, {summary['epochs_run']} of {summary['epochs']} epochs in "
             f"{_duration(summary.get('seconds'))}" + (f" ({summary['images_per_s']:.0f} training img/s)"
                                                       if summary.get("images_per_s") else "")]
    best = summary.get("best_val_acc")
    if best is not None:
        paper = summary.get("paper_val_acc")
        against = (f"; the paper's {summary['paper_name']}: {paper:.4f} ({(best - paper) * 100:+.2f} points)"
                   if paper is not None else "; not a Table 1 model")
        lines.append(f"best validation accuracy {best:.4f} at epoch {summary['best_epoch']}{against}")
    if summary.get("trainable_params"):
        lines.append(f"trained {summary['trainable_params']:,} of {summary['total_params']:,} parameters on "
                     f"{summary.get('device') or '-'}, {summary.get('precision') or '-'}")
    if summary["status"] == RunStatus.STOPPED:
        lines.append("stopped" + (f" during {summary['stopped_in']}" if summary.get("stopped_in") else "") +
                     ": run the same command again to resume from the last finished epoch")
    lines.append(f"results: {out}/metrics.jsonl, {out}/summary.json")
    return "\n".join(lines)


def _callbacks(bars: Bars | None, stop: threading.Event):
    """The engine's callbacks: progress to the bars, and the stop event Ctrl-C sets."""
    from worker.engine import Callbacks
    if bars is None:
        return Callbacks(stop=stop)
    return Callbacks(on_epoch=bars.on_epoch, on_progress=bars.on_progress, stop=stop)


def _on_interrupt(stop: threading.Event, say):
    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping after the current step (the last finished epoch is kept); Ctrl-C again to abort")
    return handler


def train(a: argparse.Namespace, cfg: TrainConfig) -> int:
    from worker.engine import Paths, assemble

    quiet = a.json
    bars = None if quiet else Bars()
    say = (lambda text: None) if quiet else bars.write
    handler = _BarLog(bars) if bars else logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO if a.verbose and not quiet else logging.WARNING)

    run = assemble(cfg, Paths(a.data_dir, a.out, a.weights_dir, a.cache_dir, allow_download=a.download,
                              teacher_dir=a.teacher_dir))
    prior = run.prior
    if prior and prior.complete:
        summary = run.complete_summary()
        if quiet:
            print(json.dumps(summary, indent=2))
        else:
            print(f"{a.out} already holds this run, complete ({prior.epoch} of {cfg.epochs} epochs): nothing to "
                  "train. Raise --epochs to train on, or choose another --out. What it found:", file=sys.stderr)
            print(summary_text(summary, a.out), file=sys.stderr)
        _gallery(a, say)
        return 0
    if prior:
        say(f"resuming {a.out} from epoch {prior.epoch + 1} ({prior.epoch} of {cfg.epochs} epochs done)")
    elif bars:
        say(f"training {cfg.model} for {cfg.epochs} epochs into {a.out}")
    if bars:
        bars.epochs = cfg.epochs

    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, _on_interrupt(stop, say))
    try:
        summary = run.run(_callbacks(bars, stop))
    finally:
        signal.signal(signal.SIGINT, previous)
        if bars:
            bars.close()
        root.removeHandler(handler)
    summary = {k: v for k, v in summary.items() if k != "config"}
    summary["resumed_from_epoch"] = prior.epoch if prior else 0
    if quiet:
        print(json.dumps(summary, indent=2))
    else:
        print(summary_text(summary, a.out), file=sys.stderr)
    _gallery(a, say)
    return 0 if summary["status"] == RunStatus.SUCCEEDED else 1


def _gallery(a: argparse.Namespace, say) -> None:
    if a.gallery:
        from core import mistakes
        try:
            say(f"gallery of mistakes: {mistakes.write_gallery(a.out, a.data_dir, a.gallery)}")
        except mistakes.NoPredictions as e:
            say(f"no gallery: {e}")


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
        return train(a, cfg)
    except (ValueError, *USER_ERRORS) as e:  # a SetupError's fixes in the command line's words
        print(f"error: {user_error_text(e, FLAGS) or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
