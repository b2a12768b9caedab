"""The engine's typed configuration: the paper's preset by default, every deviation a named field.

Each field is declared once, with `opt` (core/options.py): its default is the paper's (Malpure et al. 2021, Sec. 3,
and the authors' notebooks; one exception, `tf32`, says why and is a known deviation on every method card), and
the API, the CLI, the form, the CSV and the checkpoint rule are derived from it.
Values the paper's preset sets per model (Swin-B trained with batch 256) live in the model's catalogue entry.
Pure Python (no torch) so the backend validates experiment definitions against the same declaration.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Literal

from . import catalogue, estimate, folders
from .options import Option, opt, options_of


@dataclass
class TrainConfig:
    model: str = opt("deit_base_distilled_patch16_224", "the model: a catalogue id, or any timm model name (not in the paper)",
                     advanced=False, label="Model")
    dataset: str = opt(
        "cifar10", "the dataset: cifar10 (the paper's), cifar100 (100 fine labels; the paper has no number for it) "
        "or folder:NAME, your own images in <data dir>/folders/NAME (train/<class>/*, val/<class>/*)",
        choices=tuple(catalogue.DATASETS), pattern=folders.PREFIX + folders.NAME.pattern,
        pattern_means="folder:NAME (your images in <data dir>/folders/NAME)", advanced=False, label="Dataset")
    epochs: int = opt(20, "training epochs (paper: at most 20)", ge=1, le=200, advanced=False,
                      affects_result=False, label="Epochs")
    batch_size: int = opt(512, "images per batch (paper: 512; 256 for Swin-B)", ge=1, le=4096, advanced=False,
                          label="Batch size")
    lr: float = opt(1e-4, "Adam learning rate (paper: 1e-4)", gt=0, le=1.0, advanced=False,
                    label="Learning rate (Adam)")
    adam_eps: float = opt(1e-8, "Adam epsilon (torch's 1e-8; the authors' Keras CNNs ran with Keras' 1e-7)", gt=0,
                          le=1.0, label="Adam epsilon")
    lr_factor: float = opt(0.6, "ReduceLROnPlateau factor (paper: 0.6) ...", gt=0, lt=1, label="LR reduce factor")
    lr_patience: int = opt(2, "... after this many epochs without a better validation accuracy (paper: 2) ...",
                           ge=0, le=100, label="LR patience (epochs)")
    min_lr: float = opt(1e-7, "... down to this learning rate (paper: 1e-7)", ge=0, le=1.0, label="Minimum LR")
    label_smoothing: float = opt(0.0, "label smoothing of the training loss (paper: 0, none); val_loss stays "
                                 "plain cross-entropy", ge=0, le=0.5)
    trainable_blocks: int | None = opt(
        1, "how many of the last blocks train, with the layers after them (paper: 1, the last block): 0 = the head "
        "alone on frozen features (a linear-probe-like baseline); K = the last K blocks; empty = all, full "
        "fine-tuning. Blocks are counted on the list the paper's last-block rule takes the last of", ge=0, le=128,
        none_means="all (full fine-tuning)", label="Trainable blocks")
    teacher: int | None = opt(
        None, "distillation as DeiT's: the id of a finished job of this lab (any model, same dataset) whose "
        "predictions on the training images teach the distillation head; models with a distillation head only",
        ge=1, le=2**53, none_means="none (no distillation)", label="Teacher job")
    distillation: Literal["hard", "soft"] = opt(
        "hard", "with a teacher: hard = half cross-entropy of the class head against the labels plus half of the "
        "distillation head against the teacher's argmax (DeiT's hard distillation); soft = the second half a KL "
        "divergence to the teacher's softened predictions at distill_temperature, times its square",
        label="Distillation")
    distill_temperature: float = opt(3.0, "soft distillation's temperature (DeiT: 3.0)", gt=0, le=100,
                                     label="Distillation temperature")
    weights: str = opt("hub", "pretrained weights: hub (timm's, cached), none (random init), local (<model>.safetensors "
                       "or .pth in the weights folder: the lab's, --weights-dir, run(weights_dir=)) or, on the CLI, a "
                       ".safetensors/.pth path", web_choices=("hub", "none", "local"))
    train_per_class: int | None = opt(
        None, "training images per class, stratified and seeded (paper: all 5,000)", ge=1,
        le=catalogue.MAX_TRAIN_PER_CLASS, none_means="all", label="Training images per class")
    val_limit: int | None = opt(
        None, "validation images (paper: the whole 10,000-image test set)", ge=1,
        le=catalogue.MAX_VAL_IMAGES, none_means="all", label="Validation images")  # all 10,000 on CIFAR
    image_size: int | None = opt(224, "input size the 32 px images are upsampled to (paper: 224 for every model)",
                                 ge=32, le=512, none_means="the weights' own size", label="Image size")
    pooling: Literal["auto", "model", "max", "avg"] = opt(
        "auto", "pooling before the head; auto = the catalogue's (max for the Keras-origin CNNs)",
        label="Pooling before the head")
    hflip: bool = opt(True, "random horizontal flip, the paper's one augmentation", label="Random horizontal flip")
    head_hidden: int = opt(256, "hidden units of the MLP head (paper: Linear(features, 256) -> ELU -> Dropout -> "
                           "Linear(256, 10))", ge=1, le=8192, label="Head hidden units")
    head_dropout: float = opt(0.5, "dropout rate of the head (authors' notebooks: 0.5)", ge=0, lt=1,
                              label="Head dropout")
    head_init: Literal["torch", "he_normal"] = opt(
        "torch", "init of the head's Linear layers: torch = PyTorch's default; he_normal = Keras' he_normal kernels "
        "and zero biases (the authors' Keras CNNs)", label="Head init")
    head_l2: float = opt(0.0, "L2 penalty on the head, Keras semantics: this times the sum of squared kernel weights "
                         "of both Linear layers is added to the training loss (the authors' Keras CNNs: 0.01); "
                         "val_loss stays plain cross-entropy", ge=0, le=1.0, label="Head L2 (Keras)")
    bn_momentum: float | None = opt(
        None, "BatchNorm momentum inside the trainable block, torch convention (new = (1 - m) old + m batch): "
        "Keras' 0.99 is torch's 0.01 (the authors' Keras CNNs)", gt=0, le=1.0,
        none_means="the module's own (0.1)", label="BatchNorm momentum (block)")
    seed: int = opt(0, "data subset, init, flips and batch order all derive from it", ge=0, le=2**31 - 1)
    feature_cache: bool = opt(True, "run the frozen part once per image and flip state (exact up to the storage "
                              "dtype; see features.py)", label="Frozen-feature cache")
    cache_dtype: Literal["float16", "bfloat16", "float32"] = opt(
        "float16", "storage dtype of cached frozen features", web=False)
    precision: Literal["fp32", "bf16", "fp16", "auto"] = opt(
        "fp32", "fp32 = the paper; bf16 = bf16 autocast, a speed option (frozen part and block); fp16 = float16 "
        "autocast with a gradient scaler, for GPUs without native bf16 such as the T4 or V100 (a speed option, not "
        "the paper's numerics); auto = bf16 where the hardware has it natively, else fp32 (never fp16)")
    # The one default that is not the authors' numerics: TF32 makes the paper's fp32 cost about what bf16 costs on
    # the GPUs that have it (issue 15: DeiT-B's fp32 epoch 1 ran 3.7x faster), at a rounding far below what changes
    # an accuracy; every method card lists it as a known deviation (catalogue.TF32), and off is one option away.
    tf32: bool = opt(True, "TF32 tensor cores for fp32 matmuls and convolutions on GPUs that have them (NVIDIA "
                     "Ampere and later): inputs rounded to a 10-bit mantissa, fp32 accumulation, about bf16's speed. "
                     "On in the paper preset, a known deviation (Kaggle's 2021 GPUs had no TF32; the effect on "
                     "accuracy is expected to be negligible). Off = plain IEEE fp32, as the authors computed",
                     label="TF32 matmuls (GPU)")
    device: str = opt("auto", "auto = cuda when available, else cpu; or cpu, cuda, cuda:N", web=False,
                      affects_result=False)
    num_workers: int = opt(0, "data workers (data is preprocessed in batched tensor ops; rarely needed)", ge=0,
                           le=64, web=False, affects_result=False)

    def __post_init__(self):
        for o in OPTIONS_BY_NAME.values():
            why = o.check(getattr(self, o.name))
            if why:
                raise ValueError(f"{o.name} {why} (got {getattr(self, o.name)!r})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = {k: v for k, v in d.items() if k not in RETIRED}  # a stored config may still name a retired option
        unknown = sorted(set(d) - set(OPTIONS_BY_NAME))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**d)


OPTIONS: tuple[Option, ...] = options_of(TrainConfig)
# Options that once existed and now mean nothing: dropped when a stored config (a checkpoint, the database) has them.
# stop_check_every: since issue 13 stops are checked by time, at every batch and inside long work.
RETIRED: frozenset[str] = frozenset({"stop_check_every"})
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

# A labelled dry run: the whole pipeline of a job in minutes, never mistaken for a paper run (the experiment is
# marked `dry_run`, and the job list, compare view and CSV say so). These values cap the job's own (dry_run()).
DRY_RUN: dict[str, Any] = {"epochs": 2, "train_per_class": 50, "val_limit": 500, "image_size": 112}


def dry_run(config: dict[str, Any]) -> dict[str, Any]:
    """A config as its labelled dry run: each DRY_RUN value caps the config's own, so a dry run is never bigger
    than the run it stands for (train_per_class 2 stays 2); an empty value (all images) takes the dry run's."""
    out = dict(config)
    for k, v in DRY_RUN.items():
        own = out.get(k)
        out[k] = v if own is None else min(own, v)
    return out


def config_warnings(config: dict[str, Any]) -> list[dict[str, Any]]:
    """What a valid config does that its author likely did not mean, said before it is queued (the plan, the API's
    answer, the form), in a 422's shape ({"loc", "msg"}). Not an error: the run is well defined, and the labelled
    dry run of the paper preset (500 images, batch 512) is one of them.

    A batch larger than the training set trains on every image as one smaller batch: one optimizer step per epoch
    instead of the paper's about 98 at 50,000 images."""
    out = []
    n, batch = estimate.image_counts(config)[0], config.get("batch_size", 512)
    if batch > n:
        classes = catalogue.num_classes(config.get("dataset", "cifar10"))
        out.append({"loc": ["config", "batch_size"], "type": "batch_exceeds_training_set",
                    "msg": f"batch_size {batch:,} is larger than the {n:,} training images ({n // classes:,} per "
                           f"class x {classes} classes): every epoch is one batch of {n:,}, a single optimizer step; "
                           f"choose a batch_size of at most {n:,} or more training images per class"})
    return out


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


# -- the method card ------------------------------------------------------------------------------------------------
# What a run computes, set against the paper, for a reader who has to judge its number. Built from the catalogue
# entry and the config alone (torch-free): the API serves it (GET /api/models/{id}), `--describe` prints it, and
# tests/worker/test_catalogue.py proves the catalogue facts it rests on against the real architectures.

_NORMALIZATION = {"imagenet": "ImageNet mean/std, as its weights expect",
                  "half": "mean = std = 0.5 (inputs in [-1, 1]), as its weights expect"}
_OWN_POOLING = {"vit": "the class token after the final norm", "cait": "the class token after the final norm",
                "coat": "the class token after the final norm", "swin": "global average pooling",
                "nfnet": "global average pooling", "efficientnet": "global average pooling"}


def _pooling_text(spec: catalogue.ModelSpec, pooling: str) -> str:
    if spec.heads == 2:
        return "the class and the distillation token after the final norm, one head each, logits averaged"
    if pooling == "model":
        return f"the model's own: {_OWN_POOLING.get(spec.arch, 'timm forward_head')}"
    return {"max": "global max pooling (the authors' Keras code: pooling='max')",
            "avg": "global average pooling"}[pooling]


def _bn_text(spec: catalogue.ModelSpec, momentum: float | None) -> str:
    where = (f"on the trainable part's {spec.trainable_batchnorms} BatchNorm layers" if spec.trainable_batchnorms
             else "no BatchNorm in the trainable part: no effect")
    value = ("the module's own, 0.1 (Keras momentum 0.9)" if momentum is None
             else f"{momentum:g} (Keras momentum {1 - momentum:g})")
    return f"{value}; {where}; frozen BatchNorms never update"


def _trainable_part(spec: catalogue.ModelSpec, k: int | None, head_params: int) -> tuple[list, int | None, str]:
    """What trains at depth k, as far as the catalogue knows without building the model: the modules, their
    parameter count (None where only the architecture can say: the engine's --describe counts it) and a line."""
    heads = [f"heads.{i}" for i in range(spec.heads)]
    of = f" of {spec.blocks}" if spec.blocks else ""
    if k == 1:
        return ([*spec.trainable_modules, *heads], spec.trainable_backbone_params + head_params,
                f"the last block{of} ({spec.unfreeze_from}) and the layers after it, as the paper")
    if k == 0:
        return heads, head_params, ("none of the blocks: the head alone on frozen features (a probe); the paper "
                                    "trains the last block")
    if k is None:
        return (["all"], spec.total_params - spec.head_params() + head_params,
                "all layers: full fine-tuning (the DeiT paper's Table 7 setting, not this paper's)")
    return ([f"the last {k} blocks{of} and the layers after them", *heads], None,
            f"the last {k} blocks{of} and the layers after them; the paper trains the last block alone")


def _training_text(cfg: TrainConfig) -> str:
    return (f"Adam (lr {cfg.lr:g}, eps {cfg.adam_eps:g}), batch {cfg.batch_size}, {cfg.epochs} epochs; lr x"
            f"{cfg.lr_factor:g} after {cfg.lr_patience} epochs without a better validation accuracy (Keras "
            f"semantics), floor {cfg.min_lr:g}")


def _data_text(cfg: TrainConfig, ds: catalogue.DatasetSpec) -> str:
    """What this run reads of the dataset (the card's Data row, which the Dataset row points to)."""
    used = f"all {ds.train_size:,}" if cfg.train_per_class is None else f"{cfg.train_per_class * ds.num_classes:,}"
    val = f"all {ds.val_size:,}" if cfg.val_limit is None else f"{min(cfg.val_limit, ds.val_size):,}"
    return (f"{ds.title}: {used} training images{', random horizontal flip' if cfg.hflip else ', no augmentation'}"
            f"; validation on {val} {'validation' if ds.id.startswith(folders.PREFIX) else 'test'} images, "
            "unflipped")


def _dataset_text(ds: catalogue.DatasetSpec) -> str:
    if ds.id.startswith(folders.PREFIX):
        return (f"{ds.title}: your images in <data dir>/{ds.folder}, {ds.num_classes} classes ({ds.train_size:,} "
                f"training and {ds.val_size:,} validation images listed; unreadable files are skipped), resized to "
                "the image size, with the weights' normalization and the paper's random horizontal flip; the paper "
                "has no number for it: no paper number to compare with")
    per_class = ds.train_size // ds.num_classes
    text = (f"{ds.title}, {ds.num_classes} classes (the full set: {per_class:,} training images per class and a "
            f"{ds.val_size:,}-image test set; the Data row says what this run uses)")
    return text + ("" if ds.in_paper else f"; the paper reports no {ds.title} results: no paper number to compare "
                   "with")


def expected_trainable(config: dict[str, Any]) -> int | None:
    """The trainable count a stored config will report, as far as the catalogue knows before the run (None: a
    depth only the architecture can count, or a model outside the catalogue): what a queued job shows."""
    spec = catalogue.get(config.get("model", ""))
    if spec is None:
        return None
    try:
        classes = catalogue.num_classes(config.get("dataset", "cifar10"))
    except ValueError:  # a folder that is gone or broken: the run itself will say so
        return None
    head = spec.head_params(config.get("head_hidden", 256), classes)
    return _trainable_part(spec, config.get("trainable_blocks", 1), head)[1]


def _frozen_text(spec: catalogue.ModelSpec, cfg: TrainConfig) -> str:
    if cfg.trainable_blocks is None:
        return "none: every layer trains (BatchNorm statistics update, dropout and drop path as the weights' defaults)"
    why = ("Keras' rule for trainable=False layers, as the authors' notebooks ran" if spec.keras else
           "this lab's choice for every model (the authors' Keras rule" + (
               "; their code for this row was not released)" if spec.paper_name else ")"))
    return f"{catalogue.FROZEN_INFERENCE_TEXT}: {why}"


def _drop_path_text(spec: catalogue.ModelSpec, cfg: TrainConfig) -> str:
    if cfg.trainable_blocks != 1:
        return "timm's defaults for the trainable blocks" + (f" (the last block: drop path {spec.drop_path:g})"
                                                            if spec.drop_path else " (none in the last block)")
    if not spec.drop_path:
        return "none in the trainable block (timm's default for these weights)"
    return (f"drop path {spec.drop_path:g} on the trainable block's residual branches during training (timm's "
            "default; see the deviations)")


def soft_distillation(classes: int) -> catalogue.Deviation:
    """How this lab's soft distillation (worker/engine/distill.py) sits against DeiT's two definitions."""
    return catalogue.Deviation(
        "Soft distillation follows the DeiT paper's equation: half the cross-entropy against the labels plus half "
        "the per-sample KL divergence to the teacher's softened predictions times T^2 (KL summed over classes, "
        "averaged over the batch). DeiT's released code divides the KL sum by the number of logits (batch x "
        f"classes) instead, so its soft term is 1/{classes} of this one with {classes} classes.",
        f"The teacher weighs {classes}x more than in DeiT's released code: the student follows the teacher more "
        "closely (better when the teacher is better than the labels alone teach, worse otherwise); numbers are "
        "comparable with the DeiT paper's definition, not with runs of DeiT's code.")


def _distillation_text(spec: catalogue.ModelSpec, cfg: TrainConfig) -> str:
    if cfg.teacher is None:
        return "none" + (" (both heads learn from the labels, through the average of their logits)"
                         if spec.heads == 2 else "")
    second = ("cross-entropy of the distillation head against the teacher's argmax" if cfg.distillation == "hard"
              else f"{cfg.distill_temperature:g}^2 x KL from the teacher's predictions to the distillation head's, "
                   f"both softened at temperature {cfg.distill_temperature:g}")
    source = ("DeiT's hard distillation" if cfg.distillation == "hard" else
              "the DeiT paper's equation, not DeiT's released code: see the deviations")
    return (f"{cfg.distillation}, from job {cfg.teacher}: half cross-entropy of the class head against the labels "
            f"plus half {second} ({source}); the paper used no teacher")


def _preset_differences(cfg: TrainConfig, paper: TrainConfig) -> tuple[list[dict], list[dict]]:
    """Where `cfg` leaves the model's paper preset: the options that change what a run computes (deviations of
    the result), and those that change only how long it runs (epochs: not a deviation of the result, but the run
    is not the paper's either, 3 epochs against 20; the form's card says so)."""
    def row(o):
        return {"option": o.name, "label": o.title, "value": getattr(cfg, o.name), "paper": getattr(paper, o.name)}
    differs = [row(o) for o in result_options() if o.name != "model" and getattr(cfg, o.name) != getattr(paper, o.name)]
    length = [row(o) for o in web_options() if not o.affects_result and getattr(cfg, o.name) != getattr(paper, o.name)]
    return differs, length


def runs_in(precision: str, bf16_native: bool) -> str:
    """The precision a run computes in, never "auto": auto is bf16 where the hardware runs it natively, else fp32
    (never fp16: it needs a gradient scaler and changes the numerics more than a default should). The engine's
    autocast (worker/engine/device.py) and the plan (core/estimate.py) both decide it here."""
    if precision == "auto":
        return "bf16" if bf16_native else "fp32"
    return precision


# What each precision is, in the card's words (and the plan's, where it shows bf16 beside a run in fp32).
PRECISION_TEXT = {"fp32": "fp32, as the paper", "bf16": "bf16 autocast (a speed option; the paper trained in fp32)",
                  "fp16": "float16 autocast with a dynamic gradient scaler (a speed option for GPUs without native "
                          "bf16, such as the T4 or V100; the paper trained in fp32)",
                  "auto": "bf16 autocast where the hardware has it natively, else fp32 (never fp16)"}


def method_card(cfg: TrainConfig, built: dict | None = None) -> dict:
    """The method card of a run: the weights, input, numerics, trainable part, head and optimizer it uses, its
    trainable count against Table 1, and every remaining known deviation from the authors' runs with its likely
    effect. `config_deviations` lists where `cfg` leaves the model's paper preset (none for the preset itself).
    A timm model outside the catalogue gets a card that says so (`_timm_card`); `built` is what a worker reported
    when it built the model (its info event: where the generic rule cut, the trainable count)."""
    spec = catalogue.get(cfg.model)
    if spec is None:
        if not catalogue.is_model(cfg.model):
            raise ValueError(f"{cfg.model!r} is neither in the catalogue nor in timm's registry: no method card")
        return _timm_card(cfg, built)
    row = catalogue.paper_row(spec, cfg.dataset)
    paper = preset("paper", model=cfg.model)
    image_size = cfg.image_size or spec.native_size
    ds = catalogue.dataset(cfg.dataset)
    classes = ds.num_classes
    head_params = spec.head_params(cfg.head_hidden, classes)
    modules, trainable, depth = _trainable_part(spec, cfg.trainable_blocks, head_params)
    paper_rule = cfg.trainable_blocks == 1
    counted = (trainable if row is None or row["count_includes_mlp_head"] or not paper_rule
               else spec.trainable_backbone_params)
    pooling = spec.pooling if cfg.pooling == "auto" else cfg.pooling
    head = (f"Linear({spec.num_features}, {cfg.head_hidden}) -> ELU -> Dropout({cfg.head_dropout:g}) -> "
            f"Linear({cfg.head_hidden}, {classes})" + (" (x2)" if spec.heads == 2 else ""))
    weights = {"hub": f"{spec.weights_name}: {spec.pretrained_on}", "none": "none: random init (no pretraining)",
               "local": f"a local file: {spec.id}.safetensors (or .pth) in the worker's weights folder"}.get(
                   cfg.weights, f"the file {cfg.weights}")
    source = "the images' own size" if ds.id.startswith(folders.PREFIX) else "32 px"
    size = f"{image_size} px, bilinear from {source}" + (
        f" (its weights' own size is {spec.native_size})" if spec.native_size != image_size else "")
    precision = PRECISION_TEXT[cfg.precision]
    tf32 = ("TF32 allowed for fp32 matmuls and convolutions on GPUs that have it (Ampere and later): inputs rounded "
            "to a 10-bit mantissa, fp32 accumulation; a known deviation (the authors' GPUs had no TF32), its effect "
            "on accuracy expected negligible; CPUs and older GPUs compute plain fp32" if cfg.tf32 else
            "TF32 off: fp32 matmuls and convolutions run in plain IEEE fp32, as the authors' GPUs computed (the "
            "engine also turns off PyTorch's cuDNN TF32 default); slower on GPUs that have TF32")
    bits = catalogue.CACHE_MANTISSA_BITS[cfg.cache_dtype]
    cache = (f"on: the frozen part runs once per image and flip state, its output kept as {cfg.cache_dtype}"
             + ("" if cfg.cache_dtype == "float32" else
                f" (the block's input rounded to a {bits}-bit mantissa on every device; float32 is exact)")
             if cfg.feature_cache else "off: the frozen part runs every step")
    rounded = cfg.feature_cache and cfg.trainable_blocks is not None and cfg.cache_dtype != "float32"
    if cfg.precision == "fp32" and rounded:
        precision += (f"; but the block's input comes from the {cfg.cache_dtype} feature cache, rounded to a "
                      f"{bits}-bit mantissa (see the deviations)")
    if cfg.trainable_blocks is None:
        cache = "off: every layer trains (a full forward every step)"
    elif cfg.trainable_blocks != 1 and cfg.feature_cache:
        cache += ("; it holds the head's input (the pooled features)" if cfg.trainable_blocks == 0
                  else "; it holds the first trainable block's input" + (
                      " (CoaT: its stage's first block's)" if spec.arch == "coat" else ""))
    l2 = ("none" if not cfg.head_l2 else
          f"{cfg.head_l2:g} x the sum of squared kernel weights of both Linear layers, added to the training loss "
          f"(Keras' l2({cfg.head_l2:g})); val_loss stays plain cross-entropy, the loss Keras would print is recorded "
          f"as keras_train_loss and keras_val_loss")
    init = ("PyTorch's default (Kaiming-uniform kernels, a = sqrt(5); uniform biases)" if cfg.head_init == "torch"
            else "Keras' he_normal kernels (truncated normal, std sqrt(2 / fan_in)), zero biases")
    training, data = _training_text(cfg), _data_text(cfg, ds)
    if trainable is None:
        count = "reported by the run (python -m worker.finetune --describe computes it for any depth)"
    elif row is None:
        count = (f"{trainable:,} (the paper has no number for {ds.title})" if spec.paper_name and not ds.in_paper
                 else f"{trainable:,} (not in the paper's Table 1)")
    elif not paper_rule:
        count = f"{trainable:,}; Table 1's {row['trainable_params']:,} is for the last block alone"
    else:
        count = (f"{counted:,} counted as the paper counts ({'with' if row['count_includes_mlp_head'] else 'without'}"
                 f" the MLP head) against Table 1's {row['trainable_params']:,}: "
                 + ("the same" if counted == row["trainable_params"] else "differs (see the deviations)"))
    differs, length = _preset_differences(cfg, paper)
    card_deviations = [d for d in catalogue.known_deviations(spec)
                       if (cfg.tf32 or d is not catalogue.TF32)
                       and (d is not catalogue.CACHE_ROUNDING or (rounded and cfg.cache_dtype == "float16"))]
    if cfg.teacher is not None and cfg.distillation == "soft":
        card_deviations.append(soft_distillation(classes))
    rows = [("Model", f"{spec.id} (timm)" + (f", the paper's {spec.paper_name}" if spec.paper_name else "")),
            ("Weights", weights), ("Image size", size), ("Normalization", _NORMALIZATION[spec.input_norm]),
            ("Precision", f"{precision}; {tf32}"), ("Frozen-feature cache", cache), ("Data", data),
            ("Training", training), ("Dataset", _dataset_text(ds)), ("Trainable depth", depth), ("Trainable modules", ", ".join(modules)), ("Trainable parameters", count),
            ("Frozen part", _frozen_text(spec, cfg)), ("Stochastic depth", _drop_path_text(spec, cfg)),
            ("Head", head), ("Pooling", _pooling_text(spec, pooling)), ("Head init", init), ("Head L2", l2),
            ("BatchNorm momentum", _bn_text(spec, cfg.bn_momentum)), ("Adam epsilon", f"{cfg.adam_eps:g}"),
            ("Distillation", _distillation_text(spec, cfg))]
    return {
        "model": spec.id, "paper_name": spec.paper_name, "in_paper": row is not None,
        "paper_val_acc": row["val_acc"] if row else None,
        "timm_id": spec.id, "pretrained_tag": spec.pretrained_tag, "weights_name": spec.weights_name,
        "pretrained_on": spec.pretrained_on, "weights": cfg.weights,
        "image_size": image_size, "native_size": spec.native_size, "normalization": spec.input_norm,
        "precision": cfg.precision, "tf32": cfg.tf32, "feature_cache": cfg.feature_cache,
        "cache_dtype": cfg.cache_dtype, "batch_size": cfg.batch_size, "epochs": cfg.epochs,
        "trainable_modules": modules, "trainable_params": trainable,
        "trainable_params_as_paper_counts": counted,
        "paper_trainable_params": row["trainable_params"] if row else None,
        "paper_count_includes_mlp_head": row["count_includes_mlp_head"] if row else None,
        "count_matches_paper": counted == row["trainable_params"] if row and paper_rule else None,
        "trainable_blocks": cfg.trainable_blocks, "blocks": spec.blocks or None,
        "dataset": ds.id, "num_classes": classes, "teacher": cfg.teacher,
        "head": head, "heads": spec.heads, "pooling": pooling, "head_init": cfg.head_init, "head_l2": cfg.head_l2,
        "bn_momentum": cfg.bn_momentum, "trainable_batchnorms": spec.trainable_batchnorms,
        "adam_eps": cfg.adam_eps, "lr": cfg.lr,
        # Against a dataset the paper has no number for there is no authors' run to deviate from.
        "deviations": [asdict(d) for d in card_deviations] if ds.in_paper else [],
        "config_deviations": differs, "length_differences": length,
        "rows": [{"label": k, "value": v} for k, v in rows],
        "note": spec.note,
    }


def _timm_card(cfg: TrainConfig, built: dict | None) -> dict:
    """The card of a timm model outside the catalogue: not in the paper (no Table 1 row, no paper number, no known
    deviations: there is no authors' run), the generic last-block rule, and (once a worker has built the model and
    reported it in `built`) where that rule cut and how many parameters train. Facts the catalogue would prove
    (weights' tag and size, normalization, widths) are timm's own here, read by the worker at build time."""
    built = built or {}
    ds = catalogue.dataset(cfg.dataset)
    paper = preset("paper", model=cfg.model)
    cut, trainable = built.get("unfreeze_from"), built.get("trainable_params")
    modules = list(built.get("trainable_modules") or [])
    k = cfg.trainable_blocks
    rule = ("the generic last-block rule: timm's own block list for this model (its group_matcher); the last "
            f"{'block' if k == 1 else f'{k} blocks'} and the layers after them train" if k not in (0, None) else
            "none of the blocks: the head alone on frozen features" if k == 0 else "all layers: full fine-tuning")
    where = (f"cut at {cut} (reported by the worker that built it)" if cut else
             "where it cuts is shown once a worker has built the model (the job's first report)")
    count = (f"{trainable:,} of {built['total_params']:,} (reported by the worker that built it; not in the "
             "paper's Table 1)" if trainable is not None and built.get("total_params") else
             "reported once a worker has built the model (python -m worker.finetune --describe counts it now)")
    pooling = "model" if cfg.pooling == "auto" else cfg.pooling
    head = (f"Linear(features, {cfg.head_hidden}) -> ELU -> Dropout({cfg.head_dropout:g}) -> "
            f"Linear({cfg.head_hidden}, {ds.num_classes})")
    differs, length = _preset_differences(cfg, paper)
    rows = [("Model", f"{cfg.model} (timm): not in the paper (no Table 1 row, no paper number) and not in the "
                      "catalogue (its facts are timm's, not checked here)"),
            ("Weights", {"hub": f"{cfg.model}: timm's default pretrained weights for this name",
                         "none": "none: random init (no pretraining)",
                         "local": "a local file in the weights folder"}.get(cfg.weights, f"the file {cfg.weights}")),
            ("Image size", f"{cfg.image_size} px, bilinear from 32 px" if cfg.image_size else
             "the weights' own size"), ("Normalization", "the mean/std timm's pretrained config gives"),
            ("Precision", cfg.precision), ("Data", _data_text(cfg, ds)), ("Training", _training_text(cfg)),
            ("Dataset", _dataset_text(ds)),
            ("Trainable depth", f"{rule}; {where}"), ("Trainable modules", ", ".join(modules) or "-"),
            ("Trainable parameters", count), ("Head", head), ("Pooling", pooling),
            ("Adam epsilon", f"{cfg.adam_eps:g}")]
    return {
        "model": cfg.model, "paper_name": None, "in_paper": False, "paper_val_acc": None, "timm_id": cfg.model,
        "pretrained_tag": None, "weights_name": cfg.model, "pretrained_on": "timm's default for this name",
        "weights": cfg.weights, "image_size": cfg.image_size or built.get("image_size"),
        "native_size": built.get("native_size"), "normalization": "timm", "precision": cfg.precision,
        "tf32": cfg.tf32, "feature_cache": cfg.feature_cache, "cache_dtype": cfg.cache_dtype,
        "batch_size": cfg.batch_size, "epochs": cfg.epochs, "trainable_modules": modules,
        "trainable_params": trainable, "trainable_params_as_paper_counts": None, "paper_trainable_params": None,
        "paper_count_includes_mlp_head": None, "count_matches_paper": None, "trainable_blocks": k,
        "blocks": built.get("blocks"), "dataset": ds.id, "num_classes": ds.num_classes, "teacher": cfg.teacher,
        "head": head, "heads": built.get("heads", 1), "pooling": pooling, "head_init": cfg.head_init,
        "head_l2": cfg.head_l2, "bn_momentum": cfg.bn_momentum, "trainable_batchnorms": 0, "adam_eps": cfg.adam_eps,
        "lr": cfg.lr, "deviations": [], "config_deviations": differs, "length_differences": length,
        "rows": [{"label": a, "value": b} for a, b in rows],
        "note": "Not in the paper: a timm model trained with the generic last-block rule.",
        "in_catalogue": False, "unfreeze_from": cut,
    }


def paper_card(model: str) -> dict:
    """The method card of a model's paper preset (what "Reproduce Table 1" runs)."""
    return method_card(preset("paper", model=model))
