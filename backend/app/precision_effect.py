"""What computing in bf16 instead of the paper's fp32 did to accuracy, measured on this lab's own finished runs.

The plan shows a bf16 time beside each fp32 run where the worker runs bf16 natively (routers/plan.py); a speed
option is only worth taking with its price beside it, and that price is an accuracy difference nobody can derive:
it depends on the model, the data and the settings. So it is measured. Two finished runs form a pair of sides
when every option that affects the result but the precision is the same (core.stats.repeat_key, the seed
excluded: repeats of either side are averaged), one side computed in fp32 and the other in bf16 (the precision
that ran, never "auto"). The effect is the mean best validation accuracy of the bf16 side minus the fp32 side's,

- "these settings": from the pairs at exactly the planned run's settings;
- "this model": else from the pairs of the same model at other settings (their mean difference), said so;
- None: no pair has finished in this lab; the plan then says how to measure it, and quotes the engine's own
  measurement (BF16_REFERENCE) for what it is: another model, one epoch, not this run.

Only succeeded jobs count: an unfinished or failed run is never taken for a result.
"""
from __future__ import annotations

from statistics import mean

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.protocol import JobStatus
from core.stats import repeat_key

from .job_view import best_val_accs, effective_config, ran_precision
from .models import Experiment, Job

# The engine's measurement on real data (tests/worker/test_transfer.py asserts the two runs agree within 3 points;
# docs/method.md): the real EfficientNet-Lite0 weights, 3,000 images of the real CIFAR-10 subset, one epoch at 128
# px on this lab's two-core CPU (AVX-512 BF16 and AMX).
BF16_REFERENCE = {"model": "tf_efficientnet_lite0", "fp32_best_val_acc": 0.6520, "bf16_best_val_acc": 0.6560,
                  "what": "EfficientNet-Lite0, 3,000 real CIFAR-10 images, one epoch at 128 px, on a CPU "
                          "(tests/worker/test_transfer.py)"}

SIDES = ("fp32", "bf16")


def _pair_key(config: dict) -> str:
    """What two runs must share to be sides of one comparison: every result-affecting option but the seed and the
    precision."""
    return repeat_key({**config, "precision": "fp32"})


def _sides(db: Session) -> dict[str, dict]:
    """Succeeded runs grouped by _pair_key: {key: {"model", "fp32": {job id: best}, "bf16": {...}}}."""
    groups: dict[str, dict] = {}
    jobs = db.execute(select(Job).join(Experiment, Job.experiment_id == Experiment.id)
                      .where(Job.status == JobStatus.SUCCEEDED)).scalars().all()
    bests = best_val_accs(db, [j.id for j in jobs])
    for job in jobs:
        best, side = bests.get(job.id), ran_precision(job)
        if side not in SIDES or best is None:
            continue
        cfg = effective_config(job.experiment.config)
        g = groups.setdefault(_pair_key(cfg), {"model": cfg["model"], "fp32": {}, "bf16": {}})
        g[side][job.id] = float(best)
    return {k: g for k, g in groups.items() if g["fp32"] and g["bf16"]}


def _difference(g: dict) -> float:
    return mean(g["bf16"].values()) - mean(g["fp32"].values())


def bf16_effect(db: Session, config: dict) -> dict:
    """The measured effect of bf16 on the best validation accuracy of a run of `config` (in accuracy points, 0-1
    scale: bf16 minus fp32), where it comes from, and the jobs it rests on."""
    cfg = effective_config(config)
    paired = _sides(db)
    here = paired.get(_pair_key(cfg))
    if here is not None:
        return {"basis": "these settings", "effect": round(_difference(here), 4), "pairs": 1,
                "fp32_jobs": sorted(here["fp32"]), "bf16_jobs": sorted(here["bf16"]), "reference": None}
    same_model = [g for g in paired.values() if g["model"] == cfg["model"]]
    if same_model:
        return {"basis": "this model", "effect": round(mean(_difference(g) for g in same_model), 4),
                "pairs": len(same_model), "fp32_jobs": sorted(j for g in same_model for j in g["fp32"]),
                "bf16_jobs": sorted(j for g in same_model for j in g["bf16"]), "reference": None}
    return {"basis": None, "effect": None, "pairs": 0, "fp32_jobs": [], "bf16_jobs": [],
            "reference": {**BF16_REFERENCE, "effect": round(BF16_REFERENCE["bf16_best_val_acc"]
                                                            - BF16_REFERENCE["fp32_best_val_acc"], 4)}}
