"""Request and response shapes: a Create/Public ladder per resource. Accuracies are fractions in [0, 1].

Nothing here lists a training option or a metric: the experiment config is derived from the options' one
declaration (core/config.py), the metric row from the protocol's EPOCH_ROW (core/protocol.py). File paths are
never accepted (weights is hub, none or local).
"""
from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from core import catalogue, folders
from core.config import model_preset, web_options
from core.options import Option
from core.protocol import EPOCH_ROW, JobStatus, Phase

# The database keeps naive UTC; the API says so (RFC 3339 with an offset).
UTCDateTime = Annotated[datetime, AfterValidator(lambda d: d if d.tzinfo else d.replace(tzinfo=UTC))]


class _ConfigRules(BaseModel):
    """What the option declarations cannot say alone: the model must be in the catalogue or in timm's registry
    (core/timm_models.json: the backend validates without torch), and a field the request
    leaves out takes the paper's value for that model (Swin-B: batch 256)."""
    model_config = ConfigDict(extra="forbid")

    @field_validator("model", check_fields=False)
    @classmethod
    def _known_model(cls, v: str) -> str:
        if not catalogue.is_model(v):
            raise ValueError(f"unknown model {v!r}: neither in the catalogue (GET /api/models) nor in timm's "
                             "registry (any timm.list_models() name)")
        return v

    @field_validator("trainable_blocks", check_fields=False)
    @classmethod
    def _blocks_exist(cls, v: int | None, info):
        spec = catalogue.get(info.data.get("model", ""))
        if v is not None and spec is not None and spec.blocks and v > spec.blocks:
            raise ValueError(f"{spec.id} has {spec.blocks} blocks on the paper's block list; choose 0 to "
                             f"{spec.blocks}, or empty for all (full fine-tuning)")
        return v

    @field_validator("dataset", check_fields=False)
    @classmethod
    def _usable_dataset(cls, v: str) -> str:
        try:
            catalogue.dataset(v)  # a folder that breaks the layout: FolderError (a ValueError) says what is wrong where
        except OSError as e:
            raise ValueError(f"{v}: the folder cannot be read ({e.strerror}: {e.filename})") from None
        return v

    @field_validator("train_per_class", check_fields=False)
    @classmethod
    def _within_the_dataset(cls, v: int | None, info):
        dataset = info.data.get("dataset", "cifar10")
        ds = catalogue.DATASETS.get(dataset)
        if v is not None and ds is not None and v > ds.train_size // ds.num_classes:
            raise ValueError(f"{ds.title} has {ds.train_size // ds.num_classes:,} training images per class")
        if v is not None and ds is None and dataset.startswith(folders.PREFIX):  # the dataset check has scanned it
            name, n = folders.scan(dataset).smallest_class()
            if v > n:
                raise ValueError(f"{dataset}'s smallest class, {name!r}, has {n:,} training images, and "
                                 f"train_per_class takes that many of every class: choose {n:,} or fewer, or "
                                 "empty for all the images (the count includes files not read yet: one that "
                                 "does not decode is skipped, and counted, when the run reads it)")
        return v

    @field_validator("teacher", check_fields=False)
    @classmethod
    def _has_distillation_head(cls, v: int | None, info):
        spec = catalogue.get(info.data.get("model", ""))
        if v is not None and spec is not None and spec.heads != 2:
            raise ValueError(f"{spec.id} has no distillation head, so it cannot learn from a teacher; choose a "
                             "distilled DeiT (deit_*_distilled_*) or leave the teacher empty")
        return v

    @model_validator(mode="after")
    def _model_preset(self):
        for name, value in model_preset(self.model).items():
            if name not in self.model_fields_set:
                setattr(self, name, value)
        return self


def _field(o: Option) -> tuple[Any, Any]:
    choices = o.web_choices or o.choices
    annotation: Any = Literal[choices] if choices and not o.pattern else o.type
    if o.pattern:  # the choices or text of the pattern (dataset: folder:NAME)
        return (annotation | None if o.nullable else annotation, Field(
            o.default, description=o.help, title=o.title,
            pattern="^(?:" + "|".join(map(re.escape, choices or ())) + "|" + o.pattern + ")$"))
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
    dry_run: bool = Field(False, description="a labelled dry run: core.config.DRY_RUN (fewer epochs and images, a "
                          "small size) replaces those options; the experiment is marked and never a paper run")


class ExperimentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    archived: bool  # hidden from the lists, data kept


class ProgressPublic(BaseModel):
    """What the job is doing now (core.protocol.progress): `done` of `total` (None: unknown) in `unit`. Queued: the
    position in the queue (1 = next) of `total` queued jobs. A phase's extras (download: `what`) pass through."""
    model_config = ConfigDict(extra="allow")
    phase: Phase
    done: int
    total: int | None
    unit: str
    epoch: int | None
    split: str | None


class SettingsPublic(BaseModel):
    """What actually ran, as the worker reported it before the first epoch (the config may say "auto")."""
    image_size: int | None = None
    precision: str | None = None
    tf32: bool | None = None
    device: str | None = None
    channels_last: bool | None = None
    train_images: int | None = None
    val_images: int | None = None
    trainable_params: int | None = None
    total_params: int | None = None
    feature_cache: dict | None = None  # the engine's report, with `reused` (a cache from an earlier run was loaded)
    resumed_from_epoch: int | None = None
    teacher: dict | None = None  # the teacher's predictions: job, stored entry, reused or computed
    torch_version: str | None = None
    timm_version: str | None = None
    data_fingerprint: dict | None = None  # {"train", "val"}: hashes of the exact images and labels used
    skipped_files: dict | None = None  # a folder dataset's unusable files: {"count", "files": [{"path", "why"}]}


class AttemptPublic(BaseModel):
    """One delivery of the job to a worker. outcome: queued | running | cancelling (still going), succeeded |
    failed | cancelled, or lost (its worker went silent and the job was handed out again)."""
    attempt: int
    worker: str | None
    device: str | None
    queued_at: UTCDateTime | None
    started_at: UTCDateTime | None
    ended_at: UTCDateTime | None
    outcome: str
    error: str | None


class TimingsPublic(BaseModel):
    """Where the time went. queued_s: created to started (or to now / the cancel); setup_s: started to the first
    epoch's beginning (model, weights, data); train_s: the epochs' own wall time; total_s: created to finished
    (or now)."""
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    first_epoch_at: UTCDateTime | None  # when the first epoch's row arrived
    finished_at: UTCDateTime | None
    queued_s: float | None
    setup_s: float | None
    train_s: float | None
    total_s: float | None


class RunLookPublic(BaseModel):
    colour: str  # a shade of its model's colour
    symbol: str  # its marker (Plotly's name)
    glyph: str  # the marker as a character, for a table's swatch
    model_colour: str


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
    progress: ProgressPublic | None  # null once the job ended
    queue_position: int | None  # queued: 1 = next
    dry_run: bool  # the experiment is a labelled dry run: never compare it with the paper as a reproduction
    epochs: int
    epochs_done: int
    best_val_acc: float | None
    best_epoch: int | None
    paper_val_acc: float | None
    trainable_params: int | None
    eta_s: float | None
    look: RunLookPublic | None = None  # how the run is drawn in every chart, table and report (core.palette)
    created_at: UTCDateTime
    started_at: UTCDateTime | None
    finished_at: UTCDateTime | None
    heartbeat_at: UTCDateTime | None
    runtime_s: float | None
    info: dict | None
    config: dict[str, Any]  # every option, effective: the stored config with later options at their defaults
    settings: SettingsPublic | None  # null until the worker reported what it runs
    attempts: list[AttemptPublic]  # oldest first
    timings: TimingsPublic


class ConfigWarning(BaseModel):
    """What a valid config does that its author likely did not mean (core.config.config_warnings), shaped as a
    422's detail: the field it concerns and what happens."""
    loc: list[str]
    type: str
    msg: str


class ExperimentPublic(BaseModel):
    id: int
    name: str
    group: str | None
    archived: bool
    dry_run: bool
    config: dict[str, Any]  # as stored: the options it was created with (later options took their defaults)
    created_at: UTCDateTime
    jobs: list[JobPublic]
    warnings: list[ConfigWarning] = []


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
    colour: str  # its colour in every chart (core.palette)
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
    image_size: int | None  # None: the weights' own size, not known before a worker builds a non-catalogue model
    native_size: int | None
    normalization: Literal["imagenet", "half", "timm"]  # timm: a non-catalogue model, timm's pretrained config
    precision: str
    tf32: bool
    feature_cache: bool
    cache_dtype: str
    batch_size: int
    epochs: int
    trainable_modules: list[str]
    trainable_params: int | None  # None: only the architecture can say at this depth (--describe counts it)
    trainable_params_as_paper_counts: int | None
    paper_trainable_params: int | None
    paper_count_includes_mlp_head: bool | None
    count_matches_paper: bool | None
    trainable_blocks: int | None  # None: all (full fine-tuning)
    blocks: int | None
    dataset: str
    num_classes: int
    teacher: int | None
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
    length_differences: list[ConfigDeviation]  # options that change the run's length, not its result (epochs)
    rows: list[CardRow]  # the card as a reader sees it, in order
    note: str
    config: dict  # the model's paper preset (what config_deviations compare with)
    warnings: list[ConfigWarning] = []  # what the given config does that its author likely did not mean


class ReproduceRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    group: Annotated[str | None, AfterValidator(_group_name)] = Field(None, max_length=100)
    overrides: dict = Field(default_factory=dict)  # e.g. {"epochs": 1, "precision": "bf16"}
    dry_run: bool = False  # core.config.DRY_RUN over each model's preset, every experiment marked


MAX_SEEDS = 20  # repeats of one experiment a request may ask for: enough for a tight interval, not a flood


class RepeatRequest(BaseModel):
    """Repeat an experiment under `seeds` seeds in all (the experiment itself and its existing repeats count)."""
    model_config = ConfigDict(extra="forbid")
    seeds: int = Field(ge=2, le=MAX_SEEDS, description=f"how many runs of this config in all, 2 to {MAX_SEEDS}")


class RepeatPublic(BaseModel):
    group: str  # where the repeats stay together (given to the experiment if it had none)
    seeds: list[int]  # every seed of the config in the group, the new ones included
    created: list[ExperimentPublic]  # the missing repeats, each with a queued job (none: there were enough)


class CurvePointPublic(BaseModel):
    epoch: int
    n: int  # runs of the group that reached this epoch
    mean: float
    std: float | None  # None with one run
    min: float
    max: float


class RepeatGroupPublic(BaseModel):
    """Runs of the comparison that differ only by seed (core.stats.repeat_key), with the 95% Student's t interval of
    their best validation accuracy beside the paper's number."""
    key: str
    jobs: list[int]  # every chosen run of the group
    seeds: list[int]
    varies: list[str]  # the options its runs differ by (the seed): not a difference of method
    model: str
    name: str  # the first run's experiment name without its " · seed N"
    dry_run: bool
    n: int  # runs with a best validation accuracy
    mean: float | None
    std: float | None
    ci_low: float | None
    ci_high: float | None
    paper_val_acc: float | None
    inside: bool | None
    verdict: str  # inside | outside | no paper number | one run: no interval
    curve: list[CurvePointPublic]  # per epoch over the group's runs: what the compare view draws as mean and band
    loss_curve: list[CurvePointPublic] = []  # the same for the validation loss
    duplicates: list[int] = []  # jobs that ran a seed already counted: the same draw again, left out of the numbers


class CompareStatsPublic(BaseModel):
    groups: list[RepeatGroupPublic]  # in the order of their first job in the request
    looks: dict[int, RunLookPublic] = {}  # job id -> how the run is drawn, in every chart and the report (core.palette)
    lines: dict[str, str] = {}  # the dashes of the paper's curve, its best, and a run's training curve (core.palette)
    band: str  # what the curves' band spans
