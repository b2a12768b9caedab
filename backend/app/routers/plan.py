"""POST /api/plan: what a set of runs will cost and whether they can run, before anything is queued.

Per run: its effective config and method card, the estimated time on the lab's worker (core.estimate, with the
throughput the worker measured on its own device), on a reference GPU and on a free T4 (Colab, Kaggle), where its
frozen features will go (core.memory, on the limits the worker reported and on a Colab session's), and a preflight from the worker's
self-report (backend/app/workers.py): are the weights and the data there, will they download (about how much), or
are they missing with downloads impossible, which blocks the run and says how to fix it in the web's terms. The
same runs as a labelled dry run (core.config.DRY_RUN) are totalled beside them. GET /api/workers lists the reports.
"""
from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator
from sqlalchemy.orm import Session

from core import catalogue, estimate, memory
from core.config import DRY_RUN, PRECISION_TEXT, TrainConfig, config_warnings, dry_run, method_card
from core.settings import get_settings

from .. import workers
from ..deps import SessionDep
from ..precision_effect import PrecisionEffects
from ..schemas import ExperimentConfig

router = APIRouter(prefix="/api", tags=["plan"])


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    configs: list[ExperimentConfig] | None = Field(None, max_length=50, description="the runs to plan")
    reproduce: StrictBool = Field(False, description="plan Table 1: the paper's ten models with the paper preset")
    overrides: dict = Field(default_factory=dict, description="with reproduce: options set for every model")
    dry_run: bool = Field(False, description="plan the runs as labelled dry runs (core DRY_RUN values)")

    @model_validator(mode="after")
    def _something(self):
        if not self.reproduce and not self.configs:
            raise ValueError("give configs (a list of experiment configs) or reproduce: true")
        return self


def _configs(body: PlanRequest) -> list[dict]:
    if not body.reproduce:
        return [c.model_dump() for c in body.configs]
    out = []
    for row in catalogue.paper_table1():
        overrides = {k: v for k, v in body.overrides.items() if k != "model"}
        try:
            out.append(ExperimentConfig(model=row["model_id"], **overrides).model_dump())
        except ValidationError as err:
            raise RequestValidationError([{**d, "loc": ("body", "overrides", *d["loc"])}
                                          for d in err.errors(include_url=False)]) from err
    return out


def _mapping(v) -> dict:
    """A part of a worker's report that should be a mapping, or an empty one (a broken or forged report)."""
    return v if isinstance(v, dict) else {}


def _weights(cfg: dict, rep: dict | None) -> dict:
    model, choice = cfg["model"], cfg["weights"]
    if choice == "none":
        return {"state": "none", "mb": 0, "message": "weights: none, random init: nothing to load"}
    if rep is None:
        return {"state": "unknown", "mb": None, "message": "no worker has reported: start one to check the weights"}
    have = _mapping(_mapping(rep.get("weights")).get(model))
    wdir = rep.get("weights_dir", "the weights folder")
    put = f"weights: local, put {model}.safetensors in {wdir}"
    if choice == "local":
        if have.get("local"):
            return {"state": "cached", "mb": have.get("local_mb"), "message": f"weights: local file {have['local']}"}
        return {"state": "missing", "mb": None,
                "message": f"{put} (the worker has no {model}.safetensors or .pth there); or choose weights: hub or "
                           "none"}
    if have.get("hub"):
        return {"state": "cached", "mb": have.get("hub_mb"), "message": "weights: in the worker's hub cache"}
    mb = estimate.weights_mb(model)
    if not rep.get("hub_offline") and rep.get("hub_reachable"):
        return {"state": "download", "mb": mb, "message": f"weights: will download about {mb} MB from the hub"}
    why = "the hub is switched off (HF_HUB_OFFLINE)" if rep.get("hub_offline") else "it cannot reach the hub"
    alt = " (the worker has that file: choose weights: local)" if have.get("local") else ""
    return {"state": "missing", "mb": mb,
            "message": f"weights: not in the worker's hub cache ({wdir}/hub) and {why}. Fix: {put}{alt}; or choose "
                       "weights: none (random init); or download them once into that cache on a connected machine"}


def _data(rep: dict | None, dataset: str = "cifar10") -> dict:
    if rep is None:
        return {"state": "unknown", "mb": None, "message": "no worker has reported: start one to check the data"}
    if dataset not in catalogue.DATASETS:  # a folder of one's own images: the config's check has listed it
        ds = catalogue.dataset(dataset)
        return {"state": "present", "mb": 0, "message": f"data: {ds.title}, {ds.train_size:,} training and "
                f"{ds.val_size:,} validation images in <data dir>/{ds.folder}"}
    ds = catalogue.DATASETS[dataset]
    where = rep.get("data_dir", "the data folder")
    present = _mapping(rep.get("datasets_present")).get(dataset,
                                                        rep.get("data_present") if dataset == "cifar10" else None)
    if present:
        return {"state": "present", "mb": 0, "message": f"data: {ds.title} in {where}"}
    mb = ds.archive_mb
    if rep.get("allow_download") and rep.get("data_host_reachable"):
        return {"state": "download", "mb": mb, "message": f"data: will download {ds.title} ({mb} MB) into {where}"}
    why = ("downloads are off (BLOCKLAB_ALLOW_DOWNLOAD=false)" if not rep.get("allow_download")
           else "the worker cannot reach the dataset's host")
    fix = (f"copy the official {ds.folder}/ folder or {ds.archive} into {where}"
           + (", or allow downloads (BLOCKLAB_ALLOW_DOWNLOAD=true)" if not rep.get("allow_download") else ""))
    return {"state": "missing", "mb": mb, "message": f"data: {ds.title} is not in {where} and {why}. Fix: {fix}"}


def _dry(cfg: dict) -> dict:
    return dry_run(cfg)


def _dry_changes(configs: list[dict]) -> dict:
    """What the labelled dry run really changes in these runs, {option: the value it gets}: DRY_RUN caps, never
    raises, so a run already smaller (train_per_class 20 against the cap's 50) keeps its own and the option is no
    change; where the runs get different values, "at most" the cap. Listing DRY_RUN itself told a 20-image,
    64 px run that its dry run would use 50 images at 112 px."""
    out: dict = {}
    for k, cap in DRY_RUN.items():
        got = {_dry(c)[k] for c in configs if _dry(c)[k] != c.get(k)}
        if got:
            out[k] = got.pop() if len(got) == 1 else f"at most {cap}"
    return out


def _limits(rep: dict | None) -> memory.Limits | None:
    """The worker's reported limits (worker/queue/self_report.py), as core.memory reads them; None when unknown."""
    raw = (rep or {}).get("limits")
    if not isinstance(raw, dict):
        return None

    def size(v) -> bool:  # a byte count: a non-negative integer, never a bool
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    if not size(raw.get("host_available")) or not all(raw.get(k) is None or size(raw.get(k))
                                                      for k in ("device_free", "disk_free")):
        return None
    cache_dir = raw.get("cache_dir")
    return memory.Limits(host_available=raw["host_available"], device_free=raw.get("device_free"),
                         disk_free=raw.get("disk_free"), pinned=raw.get("pinned") is True,
                         cache_dir=cache_dir if isinstance(cache_dir, str) else None)


def _memory(cfg: dict, rep: dict | None, t4: dict) -> dict:
    """Where the run's frozen features go: on this worker (its limits, core.memory's rules, as the engine will
    decide) and on a free T4; None for a run that keeps no cache."""
    here = estimate.placement(cfg, _limits(rep))
    size = estimate.cache_size(cfg)
    return {"bytes": size["bytes"] if size else None, "this_worker": here, "t4": t4["placement"],
            "message": None if size else _no_size(cfg)}


def _no_size(cfg: dict) -> str:
    if not cfg.get("feature_cache", True):
        return "no frozen-feature cache: feature_cache is off (the frozen part runs every epoch)"
    if cfg.get("trainable_blocks", 1) is None:
        return "no frozen-feature cache: every layer trains"
    if not estimate.has_flops(cfg["model"]):
        return ("frozen features: cached, but their size is not estimated (no figure for a model outside the "
                "catalogue)")
    if cfg.get("trainable_blocks", 1) != 1:
        return ("frozen features: cached, but their size is not estimated at this depth (the plan measures the "
                "paper's split, one block)")
    return "no frozen-feature cache: this model has no cache point"


def _t4_disk_rate(rep: dict | None) -> float | None:
    """The read rate of a memory-mapped feature cache that the worker measured on its own disk, where the worker is
    itself a T4 (the lab of a Colab or Kaggle notebook): then it is the T4's, not an assumption."""
    if rep and "T4" in str(rep.get("device")):
        return workers.figure(rep.get("disk_read_bytes_per_s"), *PLAUSIBLE_BYTES_PER_S)
    return None


# What a worker's report may plausibly say: GFLOP/s from a slow CPU core to far beyond any GPU, and a bf16 speed-up
# from twenty times slower to twenty times faster. Outside it, a broken or forged report: unknown.
PLAUSIBLE_GFLOPS = (1e-3, 1e7)
PLAUSIBLE_SPEEDUP = (0.05, 20.0)
PLAUSIBLE_BYTES_PER_S = (1e3, 1e12)  # a disk's read rate: from a stalled network disk to far beyond any NVMe


def _rate(v) -> float | None:
    return workers.figure(v, *PLAUSIBLE_GFLOPS)


def _bf16_speedup(rep: dict | None) -> dict[str, float] | None:
    """The worker's bf16 speed-up per model family, where it runs bf16 natively (None elsewhere, or when the report
    carries nothing usable)."""
    raw = (rep or {}).get("bf16_speedup")
    gains = {str(k): g for k, v in raw.items() if (g := workers.figure(v, *PLAUSIBLE_SPEEDUP))} if isinstance(raw, dict) else {}
    return gains or None


def _timed(cfg: dict, rep: dict | None) -> dict:
    """The run's estimate on the worker: a job of this model at this size in the same precision has run here: its
    own speed; at another size: scaled from it; none yet: the calibration's best case, as a range
    (core.estimate.rate)."""
    rep = rep or {}
    measured = rep.get("measured") if isinstance(rep.get("measured"), dict) else {}
    r = estimate.rate(cfg, _rate(rep.get("gflops")), {k: g for k, v in measured.items() if (g := _rate(v))},
                      bf16_native=rep.get("bf16_native") is True, bf16_speedup=_bf16_speedup(rep))
    est = estimate.estimate(cfg, r["gflops"], calibrated=r["calibrated"], span=r["span"])
    est.update(measured=r["basis"] == "measured", basis=r["basis"], calibrated_by=r["from"], precision=r["precision"],
               speedup=r["speedup"])
    return est


def _bf16_beside(cfg: dict, rep: dict | None, fp32: dict, effects: PrecisionEffects) -> dict | None:
    """The same run in bf16, beside a run that computes in the paper's fp32 on a worker that runs bf16 natively
    (its report has bf16 speed-ups): the time, the speed-up, the deviation it is (as the method card names it) and
    its effect on accuracy measured on this lab's finished runs (precision_effect). None elsewhere: emulated bf16 is
    slower than fp32, and a run already in bf16 has it on its card.

    The speed-up is the ratio of two rates on the same footing: both measured by jobs of this model here, else the
    worker's start-up speed-up for the model's family (a bf16 job's rate against the fp32 calibration's best case
    would compare a real run with a tight loop)."""
    gains = _bf16_speedup(rep)
    spec = catalogue.get(cfg["model"])
    if not gains or not spec or spec.family not in gains or fp32["precision"] != "fp32" or fp32["gflops"] is None:
        return None
    bf16_cfg = {**cfg, "precision": "bf16"}
    est = _timed(bf16_cfg, rep)
    if est["this_device_s"] is None:
        return None
    card = method_card(TrainConfig(**bf16_cfg))
    deviation = next(d for d in card["config_deviations"] if d["option"] == "precision")
    both = fp32["calibrated"] and est["calibrated"]
    speedup = est["gflops"] / fp32["gflops"] if both else gains[spec.family]
    return {"this_device_s": est["this_device_s"], "range_s": est["range_s"], "calibrated": est["calibrated"],
            "basis": est["basis"], "calibrated_by": est["calibrated_by"], "speedup": round(speedup, 2),
            "speedup_measured": both, "family": spec.family,
            "deviation": {**deviation, "text": PRECISION_TEXT["bf16"]}, "accuracy": effects.bf16(cfg)}


def _item(cfg: dict, rep: dict | None, long_s: float, effects: PrecisionEffects) -> dict:
    spec = catalogue.get(cfg["model"])
    est = _timed(cfg, rep)  # no_flop_figure: a non-catalogue model
    t4 = estimate.on_t4(cfg, _t4_disk_rate(rep))
    est["t4_s"], est["t4"] = t4["seconds"], t4
    ds = catalogue.dataset(cfg.get("dataset", "cifar10"))
    pre = {"weights": {**_weights(cfg, rep), "label": f"the pretrained weights of {cfg['model']}"},
           "data": {**_data(rep, ds.id), "label": f"the dataset, {ds.title}"}}
    reasons = [p["message"] for p in pre.values() if p["state"] == "missing"]
    secs = est["this_device_s"] if est["this_device_s"] is not None else est["reference_s"]
    card = method_card(TrainConfig(**cfg))
    return {"model": cfg["model"], "paper_name": spec.paper_name if spec else None, "config": cfg,
            "card": card, "estimate": est, "bf16": _bf16_beside(cfg, rep, est, effects), "preflight": pre,
            "memory": _memory(cfg, rep, t4),
            "blocked": bool(reasons), "block_reason": "; ".join(reasons) or None, "long": secs is not None and secs > long_s,
            "warnings": config_warnings(cfg),
            # What the run is: the paper's preset (its result options and its length) or not.
            "paper_preset": not card["config_deviations"] and not card["length_differences"]}


def _total(values) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else round(sum(values), 1)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


@router.post("/plan")
def plan(body: PlanRequest, db: Session = SessionDep):
    """The plan of runs, before they are queued (changes nothing)."""
    s = get_settings()
    rep = workers.latest()
    configs = _configs(body)
    effects = PrecisionEffects(db, {c["model"] for c in configs})  # this lab's finished pairs, read once
    items = [_item(_dry(c) if body.dry_run else c, rep, s.plan_long_s, effects) for c in configs]
    dry = [_timed(_dry(c), rep) for c in configs]
    here = _total(i["estimate"]["this_device_s"] for i in items)
    calibrated = bool(items) and all(i["estimate"]["calibrated"] for i in items)
    span = None if calibrated or here is None else [
        _total(i["estimate"]["range_s"][0] if i["estimate"]["range_s"] else i["estimate"]["this_device_s"] for i in items),
        _total(i["estimate"]["range_s"][1] if i["estimate"]["range_s"] else i["estimate"]["this_device_s"] for i in items)]
    ref = _total(i["estimate"]["reference_s"] for i in items)
    t4 = _total(i["estimate"]["t4_s"] for i in items)
    worker = None if rep is None else {
        "name": rep["name"], "device": rep.get("device"), "gflops": _rate(rep.get("gflops")),
        "bf16_native": rep.get("bf16_native") is True, "bf16_speedup": _bf16_speedup(rep),
        "reported_at": _iso(rep["reported_at"]), "stale": workers.is_stale(rep),
        "calibration": rep.get("calibration"), "measured": rep.get("measured", {}),
        "allow_download": rep.get("allow_download"), "hub_reachable": rep.get("hub_reachable"),
        "hub_offline": rep.get("hub_offline"), "workers": len(workers.all_reports())}
    return {"worker": worker, "reference": dict(estimate.REFERENCE), "items": items,
            "t4": {k: v for k, v in estimate.T4.items() if k != "limits"}, "total_t4_s": t4,
            "total_this_device_s": here, "total_reference_s": ref, "calibrated": calibrated, "total_range_s": span,
            "paper_preset": bool(items) and all(i["paper_preset"] for i in items),
            "long": any(i["long"] for i in items) if None in (here, ref) else
            (here if here is not None else ref) > s.plan_long_s, "long_threshold_s": s.plan_long_s,
            "blocked": any(i["blocked"] for i in items), "dry_run_applied": body.dry_run,
            "dry_run": {"changes": _dry_changes(configs), "total_this_device_s": _total(d["this_device_s"] for d in dry),
                        "total_reference_s": _total(d["reference_s"] for d in dry)}}


@router.get("/workers")
def list_workers():
    """Every worker's latest self-report (device, measured throughput, weights and data present)."""
    return [{**r, "reported_at": _iso(r["reported_at"]), "stale": workers.is_stale(r)}
            for r in workers.all_reports()]
