"""The engine's typed configuration: the paper's preset by default, every deviation a named field.

Each field is declared once, with `opt` (core/options.py): its default is the paper's (Malpure et al. 2021, Sec. 3,
and the authors' notebooks), and the API, the CLI, the form, the CSV and the checkpoint rule are derived from it.
Values the paper's preset sets per model (Swin-B trained with batch 256) live in the model's catalogue entry.
Pure Python (no torch) so the backend validates experiment definitions against the same declaration.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

from . import catalogue
from .options import Option, options_of, opt


@dataclass
class TrainConfig:
    model: str = opt("deit_base_distilled_patch16_224", "the model: a catalogue id (any timm name on the CLI)",
                     advanced=False, label="Model")
    epochs: int = opt(20, "training epochs (paper: at most 20)", ge=1, le=200, advanced=False,
                      affects_result=False, label="Epochs")
    batch_size: int = opt(512, "images per batch (paper: 512; 256 for Swin-B)", ge=1, le=4096, advanced=False,
                          label="Batch size")
    lr: float = opt(1e-4, "Adam learning rate (paper: 1e-4)", gt=0, le=1.0, advanced=False,
                    label="Learning rate (Adam)")
    lr_factor: float = opt(0.6, "ReduceLROnPlateau factor (paper: 0.6) ...", gt=0, lt=1, label="LR reduce factor")
    lr_patience: int = opt(2, "... after this many epochs without a better validation accuracy (paper: 2) ...",
                           ge=0, le=100, label="LR patience (epochs)")
    min_lr: float = opt(1e-7, "... down to this learning rate (paper: 1e-7)", ge=0, le=1.0, label="Minimum LR")
    label_smoothing: float = opt(0.0, "label smoothing of the training loss (paper: 0, none); val_loss stays "
                                 "plain cross-entropy", ge=0, le=0.5)
    weights: str = opt("hub", "pretrained weights: hub (timm's, cached), none (random init), local (the server's "
                       "weights dir) or, on the CLI, a .safetensors/.pth path", web_choices=("hub", "none", "local"))
    train_per_class: int | None = opt(None, "training images per class, stratified and seeded (paper: all 5,000)",
                                      ge=1, le=5000, none_means="all", label="Training images per class")
    val_limit: int | None = opt(None, "validation images (paper: the whole 10,000-image test set)", ge=1, le=10000,
                                none_means="all 10,000", label="Validation images")
    image_size: int | None = opt(None, "input size the 32 px images are upsampled to", ge=32, le=512,
                                 none_means="the model's own", label="Image size")
    pooling: Literal["auto", "model", "max", "avg"] = opt(
        "auto", "pooling before the head; auto = the catalogue's (max for the Keras-origin CNNs)",
        label="Pooling before the head")
    hflip: bool = opt(True, "random horizontal flip, the paper's one augmentation", label="Random horizontal flip")
    head_hidden: int = opt(256, "hidden units of the MLP head (paper: Linear(features, 256) -> ELU -> Dropout -> "
                           "Linear(256, 10))", ge=1, le=8192, label="Head hidden units")
    head_dropout: float = opt(0.5, "dropout rate of the head (authors' notebooks: 0.5)", ge=0, lt=1,
                              label="Head dropout")
    seed: int = opt(0, "data subset, init, flips and batch order all derive from it", ge=0, le=2**31 - 1)
    feature_cache: bool = opt(True, "run the frozen part once per image and flip state (exact up to the storage "
                              "dtype; see features.py)", label="Frozen-feature cache")
    cache_dtype: Literal["float16", "bfloat16", "float32"] = opt(
        "float16", "storage dtype of cached frozen features", web=False)
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto", "auto = bf16 autocast where the hardware has it, else fp32")
    device: str = opt("auto", "auto = cuda when available, else cpu; or cpu, cuda, cuda:N", web=False,
                      affects_result=False)
    num_workers: int = opt(0, "data workers (data is preprocessed in batched tensor ops; rarely needed)", ge=0,
                           le=64, web=False, affects_result=False)
    stop_check_every: int = opt(5, "batches between checks of the stop callback", ge=1, le=10_000, web=False,
                                affects_result=False)

    def __post_init__(self):
        for o in OPTIONS_BY_NAME.values():
            why = o.check(getattr(self, o.name))
            if why:
                raise ValueError(f"{o.name} {why} (got {getattr(self, o.name)!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        unknown = sorted(set(d) - set(OPTIONS_BY_NAME))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)


OPTIONS: tuple[Option, ...] = options_of(TrainConfig)
OPTIONS_BY_NAME: dict[str, Option] = {o.name: o for o in OPTIONS}


def web_options() -> tuple[Option, ...]:
    return tuple(o for o in OPTIONS if o.web)


def result_options() -> tuple[Option, ...]:
    """Options that change what a run computes: a checkpoint resumes only where these agree."""
    return tuple(o for o in OPTIONS if o.affects_result)


def config_differences(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """Result-affecting options where a saved config differs from `cfg`. An option the saved config lacks was
    added later: the saved run had its default."""
    return [o.name for o in result_options() if saved.get(o.name, o.default) != getattr(cfg, o.name)]


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's training recipe (Sec. 3), with each model's own values from its catalogue entry.
    "paper": {},
    # A few-minute CPU check of the whole pipeline.
    "quick": {"model": "deit_tiny_patch16_224", "epochs": 2, "batch_size": 64, "train_per_class": 20,
              "val_limit": 200, "image_size": 112},
}


@cache
def _defaults() -> dict[str, Any]:
    return {o.name: o.default for o in OPTIONS}


def model_preset(model: str) -> dict[str, Any]:
    """The paper's preset values that are particular to a model (from its catalogue entry)."""
    spec = catalogue.get(model)
    return dict(spec.preset) if spec else {}


def preset(name: str = "paper", **overrides: Any) -> TrainConfig:
    """A preset, the model's own preset values, then the caller's overrides (the later wins)."""
    base = dict(PRESETS[name])
    model = overrides.get("model", base.get("model", TrainConfig.model))
    merged = {**_defaults(), **model_preset(model), **base, **overrides}
    return TrainConfig.from_dict(merged)
