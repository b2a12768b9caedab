"""A job's mistakes gallery: its misclassified validation images, paged and filtered by true and predicted class,
and their thumbnails, read from the dataset the job used through the dataset's own loader (core/datasets.py);
nothing of the dataset is copied into the run's folder (core/mistakes.py says what the run keeps)."""
from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from sqlalchemy.orm import Session

from core import mistakes
from core.settings import get_settings

from ..deps import IdPath, SessionDep
from ..models import Job

router = APIRouter(prefix="/api/jobs", tags=["mistakes"])

Epoch = Literal["best", "latest"]


def _run_dir(db: Session, job_id: int):
    if db.get(Job, job_id) is None:
        raise HTTPException(404, f"job {job_id} not found")
    return get_settings().runs_path / f"job-{job_id}"


@router.get("/{job_id}/mistakes")
def list_mistakes(job_id: IdPath,
                  true: str | None = Query(None, max_length=200, description="true class: name or index"),
                  pred: str | None = Query(None, max_length=200, description="predicted class: name or index"),
                  epoch: Epoch = "best", page: int = Query(1, ge=1, le=1_000_000),
                  per_page: int = Query(mistakes.PER_PAGE, ge=1, le=mistakes.MAX_PER_PAGE),
                  db: Session = SessionDep):
    """The misclassified validation images of the job's best (or latest) epoch, most confident first, one page;
    each with its thumbnail's URL, true and predicted class, confidence, and whether epoch 1 had it right."""
    out_dir = _run_dir(db, job_id)
    try:
        page_ = mistakes.mistakes(out_dir, epoch, true, pred, page, per_page)
    except mistakes.NoPredictions as e:
        raise HTTPException(404, f"job {job_id}: {e}") from e
    except ValueError as e:
        field = str(e).split(":", 1)[0]
        raise RequestValidationError([{"type": "value_error", "loc": ("query", field), "msg": str(e),
                                       "input": true if field == "true" else pred}]) from e
    for it in page_["items"]:
        it["thumbnail"] = f"/api/jobs/{job_id}/images/{it['row']}?epoch={epoch}"
    return page_


def _thumbnail(out_dir, row: int, epoch: str) -> bytes:
    from core import datasets  # numpy and PIL, loaded the first time a thumbnail is asked for
    dataset, image_id = mistakes.image_id(out_dir, row, epoch)
    return datasets.png(datasets.val_image(dataset, get_settings().data_path, image_id))


@router.get("/{job_id}/images/{row}", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such job, row or image"}})
def thumbnail(job_id: IdPath, row: int = FPath(ge=0, le=10_000_000), epoch: Epoch = "best",
              db: Session = SessionDep):
    """The validation image of a row of the job's kept predictions, as a small PNG (the row, never a path:
    the image is the one the dataset's loader lists under the id the run kept)."""
    out_dir = _run_dir(db, job_id)
    from core.datasets import DatasetError
    try:
        data = _thumbnail(out_dir, row, epoch)
    except (LookupError, DatasetError) as e:
        raise HTTPException(404, f"job {job_id}, image {row}: {e}") from e
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
