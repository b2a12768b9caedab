"""GET /api/compare.csv: one row per job, beside the paper's numbers."""
from fastapi import APIRouter, HTTPException, Query
from sqlalchemy.orm import Session

from core import catalogue
from core.config import WEB_FIELDS

from .. import jobs
from ..csv_export import CSVResponse, to_csv
from ..deps import SessionDep
from ..models import Job

router = APIRouter(prefix="/api", tags=["compare"])


def comparison_rows(db: Session, ids: list[int]) -> tuple[list[str], list[list]]:
    header = ["job_id", "experiment", "model", "paper_model", *WEB_FIELDS, "status", "epochs_run",
              "best_val_acc", "best_epoch", "final_val_loss", "final_val_acc", "trainable_params",
              "paper_val_acc", "diff_vs_paper", "paper_trainable_params", "runtime_s", "images_per_s"]
    rows = []
    for i in ids:
        job = db.get(Job, i)
        if job is None:
            raise HTTPException(404, f"job {i} not found")
        pub = jobs.to_public(db, job)
        cfg = job.experiment.config
        spec = catalogue.get(cfg["model"])
        paper = catalogue.paper_row(spec) if spec else None
        last = job.metrics[-1] if job.metrics else None
        ips = [m.images_per_s for m in job.metrics]
        best = pub["best_val_acc"]
        rows.append([
            job.id, job.experiment.name, cfg["model"], paper["paper_name"] if paper else None,
            *[cfg.get(f) for f in WEB_FIELDS], job.status, pub["epochs_done"], best, pub["best_epoch"],
            last.val_loss if last else None, last.val_acc if last else None, pub["trainable_params"],
            paper["val_acc"] if paper else None,
            round(best - paper["val_acc"], 6) if paper and best is not None else None,
            paper["trainable_params"] if paper else None,
            round(pub["runtime_s"], 3) if pub["runtime_s"] is not None else None,
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
