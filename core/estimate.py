"""How long a run will take, before it is queued: the work of its frozen part and of its trainable block, counted
in FLOPs per image, divided by a device's measured throughput. Torch-free: the backend plans with it.

The FLOPs per image come from `core/flops.json` (written by `tools/gen_flops.py` from the real timm models with
torch's FlopCounterMode; forward only, at 224 and 112 px). A run costs

    frozen part:  once per image and flip state some epoch uses (the frozen-feature cache), validation images once;
                  without the cache, every image every epoch
    block:        epochs x training images x 3 x block forward (forward + backward, about twice the forward)
                  + epochs x validation images x block forward

An image size between or beyond the stored ones scales the nearest stored size's work with the pixel count (for
transformers: with the token count), which is what the matmuls and convolutions scale with. Setup (building the
model, reading the data, downloads) is not counted: the plan states downloads separately.
"""
from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import catalogue, memory

FLOPS_FILE = Path(__file__).with_name("flops.json")

# The modern GPU every plan also quotes, for reference. NVIDIA's A100 datasheet gives 19.5 TFLOP/s peak FP32
# (non-tensor-core: the paper's numerics, TF32 off); a training loop of large matmuls reaches roughly 60 % of a
# peak, so 11,700 GFLOP/s effective. An assumption stated as one, not a measurement of this lab.
REFERENCE = {"name": "NVIDIA A100 40GB (fp32, TF32 off)", "gflops": 11_700.0,
             "source": "60% of the 19.5 TFLOP/s FP32 peak on NVIDIA's A100 datasheet (an assumption, not measured "
                       "here)"}


# The GPU of a free Colab or Kaggle session (issue 16). NVIDIA's T4 datasheet: 8.1 TFLOP/s peak FP32 (Turing: no
# TF32, so tf32 changes nothing there), 65 TFLOP/s peak FP16 on tensor cores, no native bf16 (precision bf16 runs
# emulated, at about fp32's speed at best). Effective rates assumed as for the A100: 60 % of the FP32 peak, and 30 %
# of the FP16 tensor-core peak (mixed precision keeps norms and softmax in fp32). Its disk: the reads of a
# memory-mapped feature cache at an assumed 200 MB/s, anywhere from 100 to 400 MB/s (Colab's persistent disk; the
# page cache, 12 GB, holds a part), until a worker on a T4 has measured its own (a job's reads of its cache file).
T4 = {"name": "NVIDIA T4 (a free Colab or Kaggle GPU)", "fp32_gflops": 4_860.0, "fp16_gflops": 19_500.0,
      "disk_bytes_per_s": 200e6, "disk_bytes_per_s_range": (100e6, 400e6), "limits": memory.COLAB_T4,
      "source": "NVIDIA's T4 datasheet (8.1 TFLOP/s FP32, 65 TFLOP/s FP16 tensor cores), at 60 % and 30 % of "
                "peak; Colab's 12.7 GB RAM, 15 GiB of GPU memory, ~70 GiB disk, 200 MB/s reads (assumptions, not "
                "measured here)"}


@lru_cache(maxsize=1)
def flops_table() -> dict[str, dict[int, dict]]:
    """model id -> image size -> {"frozen", "block"} forward GFLOPs per image."""
    raw = json.loads(FLOPS_FILE.read_text())["models"]
    return {m: {int(s): v for s, v in sizes.items()} for m, sizes in raw.items()}


def gflops_per_image(model: str, image_size: int | None) -> dict[str, float]:
    """Forward GFLOPs per image of the frozen part and of the trainable block + head at `image_size` (None: the
    weights' own size)."""
    spec = catalogue.get(model)
    if spec is None:
        raise ValueError(f"unknown model {model!r}")
    size = image_size or spec.native_size
    sizes = flops_table().get(model)
    if not sizes:
        raise ValueError(f"no FLOPs for {model} in {FLOPS_FILE.name}: run tools/gen_flops.py")
    base = min(sizes, key=lambda s: (abs(s - size), -s))
    scale = (size / base) ** 2
    return {"frozen": sizes[base]["frozen"] * scale, "block": sizes[base]["block"] * scale}


def image_counts(cfg: dict) -> tuple[int, int]:
    """Training and validation images a config uses (the dataset's declared sets: CIFAR's 50,000 training images
    over its classes, 10,000 test images; a folder of one's own images: the images it lists)."""
    per_class = cfg.get("train_per_class")
    ds = catalogue.dataset(cfg.get("dataset", "cifar10"))
    classes = ds.num_classes
    n_train = ds.train_size if per_class is None else round(classes * min(per_class, ds.train_size // classes))
    val = cfg.get("val_limit")
    return n_train, ds.val_size if val is None else min(int(val), ds.val_size)


def flip_states(epochs: int, hflip: bool) -> float:
    """Expected flip states per training image that some epoch uses: each epoch flips an image with probability
    1/2, so a state goes unused with probability 1/2^epochs (the cache computes only used states)."""
    return 2 * (1 - 0.5 ** epochs) if hflip else 1.0


def at_depth(per: dict[str, float], model: str, k: int | None) -> dict[str, float]:
    """The frozen/trainable split of a model's forward work when the last `k` blocks train (trainable_blocks).

    flops.json measures the paper's split (k = 1). Other depths move work between the two, assuming the blocks
    before the last cost the same on average (an approximation; exact for the isotropic ViTs apart from the
    patch embedding): k = 0 trains the head alone (its work is negligible), k >= 2 adds k - 1 average blocks to
    the trainable part, and all (None) trains the whole network, with nothing cached."""
    if k == 1:
        return dict(per)
    if k == 0:
        return {"frozen": per["frozen"] + per["block"], "block": 0.0}
    if k is None:
        return {"frozen": 0.0, "block": per["frozen"] + per["block"]}
    spec = catalogue.get(model)
    blocks = spec.blocks if spec and spec.blocks else k
    moved = per["frozen"] * min(k - 1, blocks - 1) / max(blocks - 1, 1)
    return {"frozen": per["frozen"] - moved, "block": per["block"] + moved}


def work(cfg: dict) -> dict[str, float]:
    """GFLOPs of a whole run: the frozen part's and the training's (block forward+backward and validation)."""
    per = at_depth(gflops_per_image(cfg["model"], cfg.get("image_size", 224)), cfg["model"],
                   cfg.get("trainable_blocks", 1))
    epochs = int(cfg.get("epochs", 20))
    n_train, n_val = image_counts(cfg)
    if not per["frozen"]:
        frozen = 0.0
    elif cfg.get("feature_cache", True):
        frozen = per["frozen"] * (n_train * flip_states(epochs, cfg.get("hflip", True)) + n_val)
    else:
        frozen = per["frozen"] * epochs * (n_train + n_val)
    train = epochs * per["block"] * (3 * n_train + n_val)
    return {"frozen_gflop": frozen, "train_gflop": train, "train_images": n_train, "val_images": n_val,
            "frozen_gflop_per_image": per["frozen"], "block_gflop_per_image": per["block"]}


def has_flops(model: str) -> bool:
    """Whether flops.json has a figure for `model` (the catalogue's; a timm model outside it has none)."""
    return bool(flops_table().get(model))


def no_flops_text(model: str) -> str:
    return (f"no time estimate: {model} is not in the catalogue, so core/flops.json has no FLOP figure to estimate "
            "from (a finished job of it on this worker gives its measured speed)")


def seconds(cfg: dict, gflops: float | None) -> dict[str, float | None]:
    """The run's time on a device of `gflops` effective GFLOP/s (None: no device figure, or no FLOP figure)."""
    if not gflops or not has_flops(cfg["model"]):
        return {"frozen_s": None, "train_s": None, "total_s": None}
    w = work(cfg)
    frozen, train = w["frozen_gflop"] / gflops, w["train_gflop"] / gflops
    if not math.isfinite(frozen + train):  # a rate too small to mean anything: no figure
        return {"frozen_s": None, "train_s": None, "total_s": None}
    return {"frozen_s": round(frozen, 1), "train_s": round(train, 1), "total_s": round(frozen + train, 1)}


# Until a job has run on a worker, its speed is the start-up calibration's (worker/queue/self_report.py): one ViT-S
# block's forward and backward in a tight loop, the best case. A real job adds what that loop lacks (the frozen
# pass over every image, preprocessing, the optimizer, validation, the head, small batches), so it runs slower:
# 4.5x to 7x in the runs issue 24 reports (70 s planned before calibration, 313 s after and 505 s real for the same
# plan), 1.6x to 4.5x in tests/system/test_plan_accuracy.py on a loaded two-core machine (DeiT-Tiny, and
# EfficientNet-Lite0 at 4.5x). An uncalibrated estimate is therefore a range, from the calibration's time to
# UNCALIBRATED_SPAN[1] times it, until a finished job of the model calibrates it.
UNCALIBRATED_SPAN = (1.0, 8.0)


# A bf16 run of a model no bf16 job has timed: the fp32 rate (a job's, or the start-up calibration's) times the
# worker's bf16 speed-up for the model's family, measured at start on a block of that family (a ViT-S block for
# transformers, a ResNet bottleneck for CNNs: worker/queue/self_report.py; on this project's CPU with AMX 2.28x and
# 1.50x). A real run's gain differs from its block's, both ways, measured on that CPU: DeiT-Tiny runs (400 training
# and 200 validation images, 3 epochs, an fp32 job then its bf16 twin in a real lab) gained 2.44x at 224 px where
# the calibration said 2.20x (the frozen pass, forward only in large batches, gains more than the block's loop) and
# 1.67x at 64 px against 2.35x (small matmuls gain less); the catalogue CNNs' frozen forwards gain 1.38x
# (EfficientNetV2-L) to 1.81x (DenseNet-201), and EfficientNet-Lite0's forward and backward at batch 8 about 1.0x.
# Swin-B's frozen forward gains 3.56x against the transformer block's 2.28x (1.56 times more), and the block's own
# figure varies between start-ups on a shared machine (1.71x to 2.4x). So the time is a range on the fp32 one's:
# from a run gaining twice what its block said (BF16_SPAN[0]) to one 10% slower than fp32 (BF16_SPAN[1]); where the
# block itself says bf16 is slower, from half to twice that. tests/system/test_plan_accuracy.py checks a bf16 run
# lands in it.
BF16_SPAN = (1 / 2, 1.1)


def measured_key(model: str, image_size: int | None, precision: str = "fp32") -> str:
    """The worker's key for a finished job's measured rate (worker/queue/self_report.py Reporter.job_finished):
    "model@size", and "@bf16" or "@fp16" after it for a job that computed in another precision than the paper's
    fp32. A bf16 job on a CPU with AMX runs about three times the fp32 rate: keyed alone, its rate would time the
    next fp32 run of the model at a third of what it takes."""
    key = f"{model}@{image_size}"
    return key if precision == "fp32" else f"{key}@{precision}"


def _parse_key(key: str) -> tuple[str, str, str]:
    """measured_key's parts: (model, size as written, precision)."""
    model, _, rest = key.partition("@")
    size, _, precision = rest.partition("@")
    return model, size, precision or "fp32"


def rate(cfg: dict, calibration_gflops: float | None, measured: dict[str, float] | None, *,
         bf16_native: bool = False, bf16_speedup: dict[str, float] | None = None) -> dict[str, Any]:
    """The throughput a plan uses for `cfg` on a worker, and how sure it is. `bf16_native`: the worker runs bf16
    natively (what precision "auto" follows); `bf16_speedup`: its bf16 speed-up per model family ({"transformer":
    2.28, "cnn": 1.5}), measured only there. Only jobs that computed in the run's own precision time it:

    - "measured": a job of this model at this size finished on the worker; its own rate (calibrated);
    - "scaled": a job of this model at another size finished there; its rate, from the nearest size (calibrated:
      within 18% of a second job's real time at other settings in tests/system/test_plan_accuracy.py);
    - "fp32 scaled": a bf16 run of a model only fp32 jobs timed: their rate times the family's bf16 speed-up (not
      calibrated: a range, BF16_SPAN);
    - "benchmark": no job of this model finished there; the start-up calibration's rate (times the family's bf16
      speed-up for a bf16 run), the best case (uncalibrated: a range). Another model's job does not calibrate this
      one: models reach very different shares of a device's speed (a DeiT-Tiny job's rate predicted an
      EfficientNet-Lite0 job 66% short on a CPU);
    - None: no worker has measured anything.

    `span`: the factors of the estimated time its real time may lie between, for estimate(); `speedup`: the bf16
    speed-up a bf16 rate was scaled by (None for a rate measured in the run's own precision)."""
    from .config import runs_in
    ran = runs_in(cfg.get("precision", "fp32"), bf16_native)
    measured = {k: v for k, v in (measured or {}).items() if isinstance(v, (int, float)) and v > 0}
    model, size = cfg["model"], cfg.get("image_size")
    own = measured.get(measured_key(model, size, ran))
    if own:
        return {"gflops": own, "basis": "measured", "calibrated": True, "from": [measured_key(model, size, ran)],
                "precision": ran, "span": None, "speedup": None}
    same = {k: v for k, v in measured.items() if _parse_key(k)[0] == model and _parse_key(k)[2] == ran}
    if same:
        def dist(k: str) -> float:
            s = _parse_key(k)[1]
            return abs((int(s) if s.isdigit() else 224) - (size or 224))
        near = min(same, key=dist)
        return {"gflops": same[near], "basis": "scaled", "calibrated": True, "from": [near], "precision": ran,
                "span": None, "speedup": None}
    spec = catalogue.get(model)
    gain = (bf16_speedup or {}).get(spec.family) if spec else None
    if ran == "bf16" and gain:
        fp32 = rate({**cfg, "precision": "fp32"}, calibration_gflops, measured)
        if fp32["gflops"]:
            low, high = fp32["span"] or (1.0, 1.0)
            # At most 10% slower than fp32; where the block itself says bf16 is slower, up to twice what it says.
            slowest = gain * BF16_SPAN[1] if gain * BF16_SPAN[1] >= 1 else 1 / BF16_SPAN[0]
            return {"gflops": fp32["gflops"] * gain, "basis": "fp32 scaled" if fp32["calibrated"] else "benchmark",
                    "calibrated": False, "from": fp32["from"], "precision": ran, "speedup": gain,
                    "span": (low * BF16_SPAN[0], high * slowest)}
    if calibration_gflops:
        return {"gflops": calibration_gflops, "basis": "benchmark", "calibrated": False, "from": [], "precision": ran,
                "span": UNCALIBRATED_SPAN, "speedup": None}
    return {"gflops": None, "basis": None, "calibrated": False, "from": [], "precision": ran, "span": None,
            "speedup": None}


def estimate(cfg: dict, gflops: float | None, *, calibrated: bool = True,
             span: tuple[float, float] | None = UNCALIBRATED_SPAN) -> dict[str, Any]:
    """What a plan shows per run: seconds on this device (None when no worker has measured one) and on the
    reference GPU, with the work they rest on. `calibrated`: whether `gflops` comes from jobs that ran on the
    worker (rate()); when not, `range_s` gives the span the time may really take (`span`, rate()'s: by default
    UNCALIBRATED_SPAN)."""
    if not has_flops(cfg["model"]):
        n_train, n_val = image_counts(cfg)
        return {"this_device_s": None, "reference_s": None, "frozen_s": None, "train_s": None,
                "reference_frozen_s": None, "reference_train_s": None, "gflops": gflops, "frozen_gflop": None,
                "train_gflop": None, "train_images": n_train, "val_images": n_val, "calibrated": False,
                "range_s": None, "no_flop_figure": no_flops_text(cfg["model"])}
    here, ref, w = seconds(cfg, gflops), seconds(cfg, REFERENCE["gflops"]), work(cfg)
    total = here["total_s"]
    span = None if calibrated or total is None or span is None else [round(total * span[0], 1),
                                                                      round(total * span[1], 1)]
    return {"this_device_s": total, "reference_s": ref["total_s"], "frozen_s": here["frozen_s"],
            "train_s": here["train_s"], "reference_frozen_s": ref["frozen_s"], "reference_train_s": ref["train_s"],
            "gflops": gflops, "calibrated": bool(calibrated and total is not None), "range_s": span,
            "frozen_gflop": round(w["frozen_gflop"], 1), "train_gflop": round(w["train_gflop"], 1),
            "train_images": w["train_images"], "val_images": w["val_images"]}


def run_gflops(cfg: dict, train_images: int, val_images: int, epochs: int, seconds_: float) -> float:
    """Effective GFLOP/s a finished run achieved: its work (as this module counts it, for the images it really
    had) over its measured epoch time. What refines a worker's calibration for that model and size: fed back, it
    predicts the run's own time."""
    classes = catalogue.num_classes(cfg.get("dataset", "cifar10"))
    counted = {**cfg, "epochs": epochs, "train_per_class": train_images / classes, "val_limit": val_images}
    w = work(counted)
    return (w["frozen_gflop"] + w["train_gflop"]) / seconds_


def weights_mb(model: str) -> int:
    """About how big a model's weights file is (fp32 parameters), when the hub has not said."""
    spec = catalogue.get(model)
    return round(spec.total_params * 4 / 2**20) if spec else 0


def cache_size(cfg: dict) -> dict | None:
    """The run's frozen-feature cache as the engine allocates it: {"bytes", "blocks", "per_image"} (every training
    image in both flip states when hflip is on, validation once); None when the run keeps no cache (feature_cache
    off, a model without a cache point, every layer training) or at a depth whose cache point flops.json lacks."""
    model, spec = cfg["model"], catalogue.get(cfg["model"])
    size = cfg.get("image_size") or (spec.native_size if spec else 224)  # None: the weights' own size
    if not cfg.get("feature_cache", True) or cfg.get("trainable_blocks", 1) != 1:
        return None
    sizes = flops_table().get(model) or {}
    if not sizes:
        return None
    base = min(sizes, key=lambda s: (abs(s - size), -s))
    entry = sizes[base]
    if not entry.get("cacheable", True) or "cached_elements" not in entry:
        return None
    elements = round(entry["cached_elements"] * (size / base) ** 2)  # tokens or pixels scale with the area
    n_train, n_val = image_counts(cfg)
    states, dtype = (2 if cfg.get("hflip", True) else 1), cfg.get("cache_dtype", "float16")
    blocks = memory.blocks(elements, n_train, n_val, states, dtype)
    return {"bytes": sum(blocks), "blocks": blocks, "per_image": elements * memory.DTYPE_BYTES[dtype]}


def placement(cfg: dict, limits: memory.Limits | None) -> dict | None:
    """Where the run's features would go under `limits` (a worker's reported ones, or the T4's): {"where",
    "reason", "bytes"}, where "off" means nowhere fits; None when the run keeps no cache or the limits are unknown."""
    size = cache_size(cfg)
    if size is None or limits is None:
        return None
    p = memory.place(size["bytes"], limits, size["blocks"])
    if p is None:
        return {"where": "off", "label": memory.LABELS["off"], "reason": memory.refusal(size["bytes"], limits),
                "bytes": size["bytes"]}
    return {"where": p.where, "label": memory.LABELS[p.where], "reason": p.reason, "bytes": size["bytes"]}


def disk_read_s(cfg: dict, bytes_per_s: float) -> float:
    """Seconds a run spends reading its frozen features back from a memory-mapped cache file: every epoch reads
    each training and validation image's features once."""
    n_train, n_val = image_counts(cfg)
    per_epoch = cache_size(cfg)["per_image"] * (n_train + n_val)
    return round(int(cfg.get("epochs", 20)) * per_epoch / bytes_per_s, 1)


def on_t4(cfg: dict, disk_bytes_per_s: float | None = None) -> dict:
    """The run on a free T4: its expected seconds (fp16's rate for precision fp16, fp32's otherwise: auto picks
    fp32 there, bf16 is emulated), where its features go under a Colab session's limits, and what reading them
    back from disk adds when they go to a memory-mapped file (and the time with the cache off, to compare).

    The disk's read rate is `disk_bytes_per_s` where a worker on a T4 measured it ("disk_read": "measured"), else
    the assumed one ("assumed"), and then the time is also given as a range ("seconds_range") over the assumed
    rates."""
    fp16 = cfg.get("precision") == "fp16"
    gflops = T4["fp16_gflops"] if fp16 else T4["fp32_gflops"]
    place = placement(cfg, T4["limits"])
    secs = seconds(cfg, gflops)["total_s"]
    disk_s = uncached_s = disk_read = secs_range = None
    rate = disk_bytes_per_s or T4["disk_bytes_per_s"]
    if place and place["where"] == "off":
        secs = seconds({**cfg, "feature_cache": False}, gflops)["total_s"]
    elif place and place["where"] == "disk":
        disk_read = "measured" if disk_bytes_per_s else "assumed"
        disk_s = disk_read_s(cfg, rate)
        if not disk_bytes_per_s:
            secs_range = [round(secs + disk_read_s(cfg, r), 1) for r in reversed(T4["disk_bytes_per_s_range"])]
        secs = round(secs + disk_s, 1)
        uncached_s = seconds({**cfg, "feature_cache": False}, gflops)["total_s"]
    return {"seconds": secs, "precision": "fp16" if fp16 else "fp32", "gflops": gflops, "placement": place,
            "disk_read_s": disk_s, "uncached_s": uncached_s, "disk_read": disk_read,
            "disk_bytes_per_s": rate if disk_read else None, "seconds_range": secs_range}
