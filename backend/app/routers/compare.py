"""GET /api/compare.csv: one row per job, beside the paper's numbers, each marked dry run or not, with its repeat
group's statistics; GET /api/epochs.csv: one row per job and epoch, for a spreadsheet's own charts; GET
/api/compare/stats: the repeat groups (runs that differ only by seed) of a comparison, their mean, sd and 95% Student's
t interval against the paper's number, their mean curves with a band, and how each run is drawn (core.palette).
The CSVs' units and columns: docs/csv.md."""
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.orm import Session

from core import catalogue, palette, stats
from core.config import web_options
from core.protocol import METRICS, metric_text

from .. import job_view, jobs
from ..csv_export import CSVResponse, tidy, to_csv
from ..deps import SessionDep
from ..models import Job
from ..schemas import CompareStatsPublic
from .experiments import base_name

router = APIRouter(prefix="/api", tags=["compare"])


def _value(job: Job, pub: dict, option: str):
    """An option's cell: as configured, but precision as it ran (fp32, bf16 or fp16; "auto" says nothing), empty while
    no worker said for an "auto" job."""
    if option == "precision":
        ran = job_view.ran_precision(job)
        return ran or (None if pub["config"]["precision"] == "auto" else pub["config"]["precision"])
    return pub["config"][option]


JobIds = Annotated[str, Query(alias="jobs", pattern=r"^\d{1,15}(,\d{1,15})*$", max_length=2000,
                              description="job ids, comma-separated")]
BAND = "min–max over the seeds"  # what the compare view's band around a repeat group's mean curve spans
# The repeat group's statistics, named for what they are statistics of (the best validation accuracy, a fraction).
_STAT_COLUMNS = ["best_val_acc_n_seeds", "best_val_acc_mean", "best_val_acc_std", "best_val_acc_ci95_low",
                 "best_val_acc_ci95_high", "paper_val_acc_vs_ci95"]
# The per-epoch table's metrics, its columns named as every CSV names them (core.protocol EPOCH_ROW's csv_name).
_EPOCH_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")


def _ids(text: str) -> list[int]:
    return list(dict.fromkeys(int(x) for x in text.split(",")))


def _load(db: Session, ids: list[int]) -> tuple[dict[int, Job], dict[int, dict]]:
    """The jobs (with experiment and metrics) and their public views; 404 naming the first one missing."""
    found = {j.id: j for j in db.scalars(jobs.job_query().where(Job.id.in_(ids))).all()}
    missing = [i for i in ids if i not in found]
    if missing:
        raise HTTPException(404, f"job {missing[0]} not found")
    views = {v["id"]: v for v in jobs.public_many(db, list(found.values()))}
    gone = [i for i in ids if i not in views]  # deleted while this request read
    if gone:
        raise HTTPException(404, f"job {gone[0]} not found")
    return found, views


def _paper(cfg: dict) -> dict | None:
    spec = catalogue.get(cfg["model"])
    return catalogue.paper_row(spec, cfg.get("dataset", "cifar10")) if spec else None


def repeat_stats(found: dict[int, Job], views: dict[int, dict], ids: list[int]) -> list[dict]:
    """The repeat groups of these jobs (core.stats.repeat_groups over the effective configs), each with its seeds,
    model, name, the paper's number and the per-epoch mean curve of its runs (core.stats.mean_curve)."""
    runs = []
    for i in ids:
        pub, paper = views[i], _paper(views[i]["config"])
        runs.append({"id": i, "config": pub["config"], "value": pub["best_val_acc"], "dry_run": pub["dry_run"],
                     "reference": paper["val_acc"] if paper else None})
    out = []
    for g in stats.repeat_groups(runs):
        first = views[g["ids"][0]]
        runs_of = g["counted"] or g["ids"]
        curve = stats.mean_curve([[(m.epoch, m.val_acc) for m in found[i].metrics] for i in runs_of])
        loss = stats.mean_curve([[(m.epoch, m.val_loss) for m in found[i].metrics] for i in runs_of])
        out.append({"key": g["key"], "jobs": g["ids"], "seeds": sorted({views[i]["config"]["seed"] for i in g["ids"]}),
                    "varies": ["seed"], "model": first["model"], "name": base_name(first["experiment_name"]),
                    "dry_run": first["dry_run"], "n": g["n"], "mean": g["mean"], "std": g["std"],
                    "ci_low": g["ci_low"], "ci_high": g["ci_high"], "paper_val_acc": g["reference"],
                    "inside": g["inside"], "verdict": g["verdict"], "curve": curve, "loss_curve": loss,
                    "duplicates": g["duplicates"]})
    return out


def comparison_rows(db: Session, ids: list[int]) -> tuple[list[str], list[list]]:
    """One row per job: whether it was a dry run (never a paper reproduction, whatever its numbers), its config
    (every option a browser may set; a config stored before an option existed had its default; the precision
    that ran), its results rounded as the protocol declares, the paper's numbers beside them, and its repeat
    group's statistics of the best validation accuracy (_STAT_COLUMNS: seeds, mean, sd, the 95% interval, and the
    paper's number against it, core.stats.verdict), the same on each row of the group. Its trainable_params is the
    run's own count (the worker's, once it built the model), empty for a job that never built it: the catalogue's
    count for its config is no result of the run (the job page shows that one as expected). Columns: docs/csv.md."""
    options = [o for o in web_options() if o.name != "model"]
    header = ["job_id", "experiment", "model", "paper_model", "dry_run", *(o.name for o in options), "status",
              "epochs_run",
              "best_val_acc", "best_epoch", "final_val_loss", "final_val_acc", "trainable_params",
              "paper_val_acc", "diff_vs_paper", "paper_trainable_params", "runtime_s", "images_per_s",
              *_STAT_COLUMNS]
    found, views = _load(db, ids)
    group_of = {i: g for g in repeat_stats(found, views, ids) for i in g["jobs"]}
    rows = []
    for i in ids:
        job, pub = found[i], views[i]
        cfg = job.experiment.config
        paper = _paper(cfg)
        g = group_of[i]
        last = job.metrics[-1].row() if job.metrics else {}
        ips = [m.images_per_s for m in job.metrics if m.images_per_s is not None]
        best = pub["best_val_acc"]
        rows.append([
            job.id, job.experiment.name, cfg["model"], paper["paper_name"] if paper else None, pub["dry_run"],
            *(tidy(_value(job, pub, o.name)) for o in options), job.status, pub["epochs_done"],
            metric_text({"val_acc": best}, "val_acc"), pub["best_epoch"],
            metric_text(last, "val_loss") if last else None, metric_text(last, "val_acc") if last else None,
            (job.info or {}).get("trainable_params"), paper["val_acc"] if paper else None,
            round(best - paper["val_acc"], 4) if paper and best is not None else None,
            paper["trainable_params"] if paper else None,
            round(pub["runtime_s"], 1) if pub["runtime_s"] is not None else None,
            round(sum(ips) / len(ips), 2) if ips else None,
            g["n"], *(_rounded(g[k]) for k in ("mean", "std", "ci_low", "ci_high")), g["verdict"],
        ])
    return header, rows


def _rounded(v: float | None) -> float | None:
    """A statistic of accuracies at the protocol's precision for val_acc (core.protocol.metric_text)."""
    return None if v is None else metric_text({"val_acc": v}, "val_acc")


@router.get("/compare.csv", response_class=CSVResponse)
def compare_csv(jobs_: JobIds, db: Session = SessionDep):
    header, rows = comparison_rows(db, _ids(jobs_))
    return CSVResponse(to_csv(header, rows),
                       headers={"Content-Disposition": 'attachment; filename="blocklab-compare.csv"'})


def epoch_rows(db: Session, ids: list[int]) -> tuple[list[str], list[list]]:
    """One row per job and epoch, in the order of the ids: who ran it (job, name, model; whether a dry run, its
    status, so a row on its own cannot pass for a finished paper run) and the epoch's numbers as the protocol
    rounds them."""
    header = ["job_id", "experiment", "model", "dry_run", "status", "epoch", *(METRICS[c].csv_name for c in _EPOCH_COLUMNS)]
    found, views = _load(db, ids)
    rows = []
    for i in ids:
        job = found[i]
        for m in job.metrics:
            r = m.row()
            rows.append([job.id, job.experiment.name, views[i]["model"], views[i]["dry_run"], job.status, m.epoch,
                         *(tidy(metric_text(r, c)) for c in _EPOCH_COLUMNS)])
    return header, rows


@router.get("/epochs.csv", response_class=CSVResponse)
def epochs_csv(jobs_: JobIds, db: Session = SessionDep):
    header, rows = epoch_rows(db, _ids(jobs_))
    return CSVResponse(to_csv(header, rows),
                       headers={"Content-Disposition": 'attachment; filename="blocklab-epochs.csv"'})


@router.get("/compare/stats", response_model=CompareStatsPublic)
def compare_stats(jobs_: JobIds, db: Session = SessionDep):
    """The chosen jobs' repeat groups (a run alone is a group of one: n 1, no interval), what the compare view shows
    as one row per group and draws as a mean curve with a band."""
    ids = _ids(jobs_)
    found, views = _load(db, ids)
    return {"groups": repeat_stats(found, views, ids), "band": BAND,
            "looks": {i: views[i]["look"] for i in ids}, "lines": palette.LINES}
