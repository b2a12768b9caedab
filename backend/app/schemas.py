"""Request and response shapes: a Create/Public ladder per resource. Accuracies are fractions in [0, 1].

Nothing here lists a training option or a metric: the experiment config is derived from the options' one
declaration (core/config.py), the metric row from the protocol's EPOCH_ROW (core/protocol.py). File paths are
never accepted (weights is hub, none or local).
"""
from __future__ import annotations

import unicodedata
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from core import catalogue
from core.config import model_preset, web_options
from core.options import Option
from core.protocol import EPOCH_ROW, JobStatus

# The database keeps naive UTC; the API says so (RFC 3339 with an offset).
UTCDateTime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=timezone.utc))]


class _ConfigRules(BaseModel):
    """What the option declarations cannot say alone: the model must be in the catalogue, and a field the request
    leaves out takes the paper's value for that model (Swin-B: batch 256)."""
    model_config = ConfigDict(extra="forbid")

    @field_validator("model", check_fields=False)
    @classmethod
    def _known_model(cls, v: str) -> str:
        if catalogue.get(v) is None:
            raise ValueError(f"unknown model {v!r}; choose one of GET /api/models")
        return v

    @model_validator(mode="after")
    def _model_preset(self):
        for name, value in model_preset(self.model).items():
            if name not in self.model_fields_set:
                setattr(self, name, value)
        return self


def _field(o: Option) -> tuple[Any, Any]:
    choices = o.web_choices or o.choices
    annotation: Any = Literal[choices] if choices else o.type
    if o.nullable:
        annotation = annotation | None
    bounds = {k: getattr(o, k) for k in ("ge", "gt", "le", "lt") if getattr(o, k) is not None}
    extra = {"allow_inf_nan": False} if o.type is float else {}
    if o.type is str and not choices:
        extra["max_length"] = 200
    return annotation, Field(o.default, description=o.help, title=o.title, **bounds, **extra)


ExperimentConfig = create_model(
    "ExperimentConfig", __base__=_ConfigRules, __doc__="The engine's config as a browser may set it; defaults "
    "are the paper's preset.", **{o.name: _field(o) for o in web_options()})


def _not_blank(v: str | None) -> str | None:
    """A name a person can read and a URL can carry: trimmed, not empty, no control characters."""
    if v is None:
        return v
    if not v.strip():
        raise ValueError("must not be empty or only spaces")
    if any(unicodedata.category(c) == "Cc" for c in v):
        raise ValueError("must not contain control characters")
    return v.strip()


def _group_name(v: str | None) -> str | None:
    v = _not_blank(v)
    if v is not None and "/" in v:
        raise ValueError("must not contain '/' (a group is addressed as /api/groups/<name>/...)")
    return v


class ExperimentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, AfterValidator(_not_blank)] = Field(min_length=1, max_length=200)
    group: Annotated[str | None, AfterValidator(_group_name)] = Field(None, max_length=100)
    config: ExperimentConfig = Field(default_factory=ExperimentConfig)
    start: bool = True  # queue a job at once


class ExperimentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    archived: bool  # hidden from the lists, data kept


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    experiment_id: int
    experiment_name: str
    model: str
    status: JobStatus
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
    archived: bool
    config: dict[str, Any]  # as stored: the options it was created with (later options took their defaults)
    created_at: UTCDateTime
    jobs: list[JobPublic]


class GroupActionPublic(BaseModel):
    group: str
    changed: list[int]  # the jobs this request cancelled or resumed
    unchanged: dict[int, str]  # the others, and why


_METRIC_TYPES = {"int": int, "float": float, "vector": list[float], "matrix": list[list[int]]}
MetricPublic = create_model(
    "MetricPublic", __doc__="One epoch's row (core.protocol.EPOCH_ROW). A non-finite value is null here and named in "
    "`nonfinite`.",
    **{m.name: (_METRIC_TYPES[m.kind] | None, Field(None, description=m.help)) for m in EPOCH_ROW},
    nonfinite=(dict[str, str] | None, None))


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
    preset: dict  # the paper's preset values particular to this model (option: value)
    pretrained_tag: str | None
    weights_name: str  # what weights="hub" loads: timm's `model.tag`
    pretrained_on: str
    native_size: int  # the weights' own input size; the paper's preset runs every model at 224
    trainable_modules: list[str]
    keras: bool  # the authors ran it as a Keras application (their notebooks)


class Deviation(BaseModel):
    what: str
    effect: str  # its likely effect on the number


class CardRow(BaseModel):
    label: str
    value: str


class ConfigDeviation(BaseModel):
    option: str
    label: str
    value: Any
    paper: Any


class ModelCard(BaseModel):
    """A model's method card (core.config.method_card): what its paper preset (what "Reproduce Table 1" runs), or a
    given config, runs, set against the paper, with every remaining known deviation and its likely effect."""
    model: str
    paper_name: str | None
    in_paper: bool
    paper_val_acc: float | None
    timm_id: str
    pretrained_tag: str | None
    weights_name: str
    pretrained_on: str
    weights: str
    image_size: int
    native_size: int
    normalization: Literal["imagenet", "half"]
    precision: str
    tf32: bool
    feature_cache: bool
    cache_dtype: str
    batch_size: int
    epochs: int
    trainable_modules: list[str]
    trainable_params: int
    trainable_params_as_paper_counts: int
    paper_trainable_params: int | None
    paper_count_includes_mlp_head: bool | None
    count_matches_paper: bool | None
    head: str
    heads: int
    pooling: str
    head_init: str
    head_l2: float
    bn_momentum: float | None
    trainable_batchnorms: int
    adam_eps: float
    lr: float
    deviations: list[Deviation]
    config_deviations: list[ConfigDeviation]
    rows: list[CardRow]  # the card as a reader sees it, in order
    note: str
    config: dict  # the model's paper preset (what config_deviations compare with)


class ReproduceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: Annotated[str | None, AfterValidator(_group_name)] = Field(None, max_length=100)
    overrides: dict = Field(default_factory=dict)  # e.g. {"epochs": 1, "train_per_class": 10} for a dry run
