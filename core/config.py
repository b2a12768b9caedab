"""The engine's typed configuration: the paper's preset by default, every deviation a named field.

Pure Python (no torch) so the backend can validate experiment definitions against the same fields.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

# Fields a browser may set (the backend's experiment config); the rest are server or CLI concerns.
WEB_FIELDS = (
    "model", "epochs", "batch_size", "lr", "weights", "train_per_class", "val_limit", "image_size", "seed",
    "pooling", "lr_factor", "lr_patience", "min_lr", "hflip", "head_hidden", "head_dropout", "feature_cache",
    "precision",
)


@dataclass
class TrainConfig:
    model: str = "deit_base_distilled_patch16_224"  # the paper's best model (96.45%)
    epochs: int = 20  # paper: at most 20 epochs
    batch_size: int = 512  # paper: 512 (256 for Swin)
    lr: float = 1e-4  # paper: Adam, 1e-4
    lr_factor: float = 0.6  # paper: ReduceLROnPlateau factor 0.6 ...
    lr_patience: int = 2  # ... after 2 epochs without a better validation accuracy ...
    min_lr: float = 1e-7  # ... down to 1e-7
    weights: str = "hub"  # "hub" (timm pretrained, cached), "none" (random init) or a local file path
    train_per_class: int | None = None  # None = all training images; K = a stratified, seeded K per class
    val_limit: int | None = None  # None = the whole CIFAR-10 test set (the paper's validation set)
    image_size: int | None = None  # None = the model's own input size (224 for every paper model)
    pooling: Literal["auto", "model", "max", "avg"] = "auto"  # auto = the catalogue's (max for Keras-origin CNNs)
    hflip: bool = True  # paper: random horizontal flip is the only augmentation
    head_hidden: int = 256  # paper: Linear(features, 256) -> ELU -> Dropout -> Linear(256, 10)
    head_dropout: float = 0.5  # authors' notebooks: Dropout(0.5)
    seed: int = 0  # data subset, init, flips and batches all derive from it
    feature_cache: bool = True  # run the frozen part once per image and flip state (exact, see features.py)
    cache_dtype: Literal["float16", "bfloat16", "float32"] = "float16"  # storage of cached frozen features
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto = bf16 autocast where the hardware has it
    device: str = "auto"  # auto = cuda when available, else cpu
    num_workers: int = 0  # data is preprocessed in batched tensor ops; workers are rarely needed
    stop_check_every: int = 5  # batches between checks of the stop callback

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # The paper's training recipe (Sec. 3); Swin-B used batch 256.
    "paper": {},
    # A few-minute CPU check of the whole pipeline.
    "quick": {"model": "deit_tiny_patch16_224", "epochs": 2, "batch_size": 64, "train_per_class": 20,
              "val_limit": 200, "image_size": 112},
}


def paper_batch_size(model: str) -> int:
    """The paper trained with batch 512, and Swin-B with 256."""
    return 256 if model.startswith("swin_") else 512


def preset(name: str = "paper", **overrides: Any) -> TrainConfig:
    base = dict(PRESETS[name])
    if name == "paper" and "batch_size" not in overrides:
        base["batch_size"] = paper_batch_size(overrides.get("model", TrainConfig.model))
    base.update(overrides)
    return TrainConfig.from_dict(base)


