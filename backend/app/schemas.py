"""Request and response shapes: a Create/Public ladder per resource. Accuracies are fractions in [0, 1].

The experiment config mirrors the engine's TrainConfig (worker/config.py) field for field, with the bounds a
browser may ask for; file paths are never accepted (weights is hub, none or local).
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from core import catalogue
from core.config import WEB_FIELDS, TrainConfig, paper_batch_size

_D = TrainConfig()

# The database keeps naive UTC; the API says so (RFC 3339 with an offset).
UTCDateTime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=timezone.utc))]


class ExperimentConfig(BaseModel):
    """The engine's config as a browser may set it; defaults are the paper's preset."""
    model_config = ConfigDict(extra="forbid")

    model: str = _D.model
    epochs: int = Field(_D.epochs, ge=1, le=200)
    batch_size: int = Field(_D.batch_size, ge=1, le=4096)
    lr: float = Field(_D.lr, gt=0, le=1.0)
    weights: Literal["hub", "none", "local"] = "hub"
    train_per_class: int | None = Field(_D.train_per_class, ge=1, le=5000)
    val_limit: int | None = Field(_D.val_limit, ge=1, le=10000)
    image_size: int | None = Field(_D.image_size, ge=32, le=512)
    seed: int = Field(_D.seed, ge=0, le=2**31 - 1)
    pooling: Literal["auto", "model", "max", "avg"] = _D.pooling
    lr_factor: float = Field(_D.lr_factor, gt=0, lt=1)
    lr_patience: int = Field(_D.lr_patience, ge=0, le=100)
    min_lr: float = Field(_D.min_lr, ge=0, le=1.0)
    hflip: bool = _D.hflip
    head_hidden: int = Field(_D.head_hidden, ge=1, le=8192)
    head_dropout: float = Field(_D.head_dropout, ge=0, lt=1)
    feature_cache: bool = _D.feature_cache
    precision: Literal["auto", "fp32", "bf16"] = _D.precision

    @field_validator("model")
    @classmethod
    def _known_model(cls, v: str) -> str:
        if catalogue.get(v) is None:
            raise ValueError(f"unknown model {v!r}; choose one of GET /api/models")
        return v


    @model_validator(mode="after")
    def _paper_batch(self):
        if "batch_size" not in self.model_fields_set:
            self.batch_size = paper_batch_size(self.model)
        return self


assert set(ExperimentConfig.model_fields) == set(WEB_FIELDS), "web config and engine config drifted apart"


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    group: str | None = Field(None, max_length=100)
    config: ExperimentConfig = Field(default_factory=ExperimentConfig)
    start: bool = True  # queue a job at once


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    experiment_id: int
    experiment_name: str
    model: str
    status: str
    attempt: int
    error: str | None
    device: str | None
    worker: str | None
    progress: dict
    epochs: int
    epochs_done: int
    best_val_acc: float | None
    best_epoch: int | None
    paper_val_acc: float | None
    trainable_params: int | None
    eta_s: float | None
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    heartbeat_at: UTCDateTime | None
    runtime_s: float | None
    info: dict | None


class ExperimentPublic(BaseModel):
    id: int
    name: str
    group: str | None
    config: ExperimentConfig
    created_at: UTCDateTime
    jobs: list[JobPublic]


class MetricPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    images_per_s: float
    per_class_acc: list[float] | None
    confusion: list[list[int]] | None


class ModelPublic(BaseModel):
    id: str
    family: Literal["cnn", "transformer"]
    in_paper: bool
    paper_name: str | None
    paper_val_acc: float | None
    paper_trainable_params: int | None
    paper_count_includes_mlp_head: bool | None
    trainable_params: int
    total_params: int
    unfreeze_from: str
    paper_unfreeze_from: str | None
    pooling: str
    quick: bool
    note: str


class ReproduceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: str | None = Field(None, max_length=100)
    overrides: dict = Field(default_factory=dict)  # e.g. {"epochs": 1, "train_per_class": 10} for a dry run
