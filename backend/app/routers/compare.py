"""GET /api/compare.csv: one row per job, beside the paper's numbers, each marked dry run or not."""
from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.orm import Session

from core import catalogue
from core.config import web_options
from core.protocol import metric_text

from .. import job_view, jobs
from ..csv_export import CSVResponse, tidy, to_csv
from ..deps import SessionDep
from ..models import Job

router = APIRouter(prefix="/api", tags=["compare"])


def _value(job: Job, pub: dict, option: str):
    """An option's cell: as configured, but precision as it ran (fp32 or bf16; "auto" says nothing), empty while
    no worker said for an "auto" job."""
    if option == "precision":
        ran = job_view.ran_precision(job)
        return ran or (None if pub["config"]["precision"] == "auto" else pub["config"]["precision"])
    return pub["config"][option]


def comparison_rows(db: Session, ids: list[int]) -> tuple[list[str], list[list]]:
    """One row per job: whether it was a dry run (never a paper reproduction, whatever its numbers), its config
    (every option a browser may set; a config stored before an option existed had its default; the precision
    that ran), its results rounded as the protocol declares, and the paper's numbers beside them."""
    options = [o for o in web_options() if o.name != "model"]
    header = ["job_id", "experiment", "model", "paper_model", "dry_run", *(o.name for o in options), "status",
              "epochs_run",
              "best_val_acc", "best_epoch", "final_val_loss", "final_val_acc", "trainable_params",
              "paper_val_acc", "diff_vs_paper", "paper_trainable_params", "runtime_s", "images_per_s"]
    found = {j.id: j for j in db.scalars(jobs.job_query().where(Job.id.in_(ids))).all()}
    missing = [i for i in ids if i not in found]
    if missing:
        raise HTTPException(404, f"job {missing[0]} not found")
    views = {v["id"]: v for v in jobs.public_many(db, list(found.values()))}
    gone = [i for i in ids if i not in views]  # deleted while this request read
    if gone:
        raise HTTPException(404, f"job {gone[0]} not found")
    rows = []
    for i in ids:
        job, pub = found[i], views[i]
        cfg = job.experiment.config
        spec = catalogue.get(cfg["model"])
        paper = catalogue.paper_row(spec) if spec else None
        last = job.metrics[-1].row() if job.metrics else {}
        ips = [m.images_per_s for m in job.metrics if m.images_per_s is not None]
        best = pub["best_val_acc"]
        rows.append([
            job.id, job.experiment.name, cfg["model"], paper["paper_name"] if paper else None, pub["dry_run"],
            *(tidy(_value(job, pub, o.name)) for o in options), job.status, pub["epochs_done"],
            metric_text({"val_acc": best}, "val_acc"), pub["best_epoch"],
            metric_text(last, "val_loss") if last else None, metric_text(last, "val_acc") if last else None,
            pub["trainable_params"], paper["val_acc"] if paper else None,
            round(best - paper["val_acc"], 4) if paper and best is not None else None,
            paper["trainable_params"] if paper else None,
            round(pub["runtime_s"], 1) if pub["runtime_s"] is not None else None,
            round(sum(ips) / len(ips), 2) if ips else None,
        ])
    return header, rows


@router.get("/compare.csv", response_class=CSVResponse)
def compare_csv(jobs_: str = Query(..., alias="jobs", pattern=r"^\d{1,15}(,\d{1,15})*$", max_length=2000),
                db: Session = SessionDep):
    ids = list(dict.fromkeys(int(x) for x in jobs_.split(",")))
    header, rows = comparison_rows(db, ids)
    return CSVResponse(to_csv(header, rows),
                       headers={"Content-Disposition": 'attachment; filename="blocklab-compare.csv"'})
