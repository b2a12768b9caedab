"""What computing in bf16 instead of the paper's fp32 did to accuracy, measured on this lab's own finished runs.

The plan shows a bf16 time beside each fp32 run where the worker runs bf16 natively (routers/plan.py); a speed
option is only worth taking with its price beside it, and that price is an accuracy difference nobody can derive:
it depends on the model, the data and the settings. So it is measured, like for like: two succeeded runs form a
pair when every option that affects the result but the precision is the same (core.stats.repeat_key, which leaves
out the seed) and so is the seed, one computed in fp32 and the other in bf16 (the precision that ran, never
"auto"). As in the repeat groups (core.stats.repeat_groups), a seed counts once per side: a second run of a seed is
the same draw, not another. The effect is the mean of the pairs' differences (bf16 minus fp32, best validation
accuracy, 0-1 scale) with its 95% Student's t interval from two pairs on (core.stats.summary):

- "these settings": the pairs at exactly the planned run's settings;
- "this model": else the pairs of the same model on the same dataset at other settings, said so;
- None: no pair has finished in this lab; the plan then says how to measure it, and quotes the engine's own
  measurement (core.catalogue.BF16_REFERENCE) for what it is: another model, one epoch, not this run.

Only succeeded runs count, and no dry run: an unfinished run is never taken for a result, and a dry run never for
a real run's.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session, contains_eager

from core import catalogue, stats
from core.protocol import JobStatus

from .job_view import best_val_accs, effective_config, ran_precision
from .models import Experiment, Job

SIDES = ("fp32", "bf16")
EFFECT_BOUNDS = (-1.0, 1.0)  # a difference of two accuracies


def _pair_key(config: dict) -> str:
    """What two runs must share to be a pair, the seed apart (matched separately): every result-affecting option
    but the precision."""
    return stats.repeat_key({**config, "precision": "fp32"})


class PrecisionEffects:
    """The finished fp32 and bf16 runs of some models in this lab, read once per plan (Table 1 asks for ten)."""

    def __init__(self, db: Session, models: set[str]):
        self._groups: dict[str, dict] = {}
        jobs = db.execute(select(Job).join(Experiment, Job.experiment_id == Experiment.id)
                          .options(contains_eager(Job.experiment))  # each job's experiment in the same query
                          .where(Job.status == JobStatus.SUCCEEDED, Experiment.dry_run.is_(False),
                                 Experiment.config["model"].as_string().in_(sorted(models)))
                          .order_by(Job.id)).scalars().all()
        bests = best_val_accs(db, [j.id for j in jobs])
        for job in jobs:
            best, side = bests.get(job.id), ran_precision(job)
            if side not in SIDES or best is None:
                continue
            cfg = effective_config(job.experiment.config)
            g = self._groups.setdefault(_pair_key(cfg), {"model": cfg["model"], "dataset": cfg["dataset"],
                                                         "fp32": {}, "bf16": {}})
            g[side].setdefault(cfg["seed"], (job.id, best))  # a seed's first run; a second is the same draw

    @staticmethod
    def _pairs(g: dict) -> list[tuple[int, int, float]]:
        """(fp32 job, bf16 job, difference) per seed both sides ran."""
        return [(g["fp32"][s][0], g["bf16"][s][0], g["bf16"][s][1] - g["fp32"][s][1])
                for s in sorted(set(g["fp32"]) & set(g["bf16"]))]

    def bf16(self, config: dict) -> dict:
        """The measured effect of bf16 on the best validation accuracy of a run of `config`, where it comes from,
        and the jobs it rests on."""
        cfg = effective_config(config)
        here = self._groups.get(_pair_key(cfg))
        pairs, basis = (self._pairs(here), "these settings") if here else ([], None)
        if not pairs:
            pairs = [p for g in self._groups.values() if g["model"] == cfg["model"] and g["dataset"] == cfg["dataset"]
                     for p in self._pairs(g)]
            basis = "this model" if pairs else None
        if not pairs:
            ref = catalogue.BF16_REFERENCE
            return {"basis": None, "effect": None, "pairs": 0, "ci_low": None, "ci_high": None, "fp32_jobs": [],
                    "bf16_jobs": [], "reference": {**ref, "effect": round(ref["bf16_best_val_acc"]
                                                                          - ref["fp32_best_val_acc"], 4)}}
        s = {k: round(v, 4) if isinstance(v, float) else v
             for k, v in stats.summary([d for _, _, d in pairs], bounds=EFFECT_BOUNDS).items()}
        return {"basis": basis, "effect": s["mean"], "pairs": s["n"], "ci_low": s["ci_low"], "ci_high": s["ci_high"],
                "fp32_jobs": [a for a, _, _ in pairs], "bf16_jobs": [b for _, b, _ in pairs], "reference": None}
