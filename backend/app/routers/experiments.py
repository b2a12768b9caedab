"""Experiments: a name and the engine's config; starting one queues a job."""
from fastapi import APIRouter, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core import catalogue

from .. import jobs
from ..deps import IdPath, SessionDep, WriteAccess
from ..models import Experiment, Job
from ..schemas import ExperimentConfig, ExperimentCreate, ExperimentPublic, JobPublic, ReproduceRequest

router = APIRouter(prefix="/api", tags=["experiments"])


def _public_many(db: Session, exps: list[Experiment]) -> list[dict]:
    """Experiments with their jobs: a constant number of queries whatever their number."""
    views = iter(jobs.public_many(db, [j for e in exps for j in e.jobs]))
    return [{"id": e.id, "name": e.name, "group": e.group, "config": e.config, "created_at": e.created_at,
             "jobs": [next(views) for _ in e.jobs]} for e in exps]


def _public(db: Session, e: Experiment) -> dict:
    return _public_many(db, [e])[0]


@router.post("/experiments", response_model=ExperimentPublic, status_code=201, dependencies=[WriteAccess])
def create_experiment(body: ExperimentCreate, db: Session = SessionDep):
    e = Experiment(name=body.name, group=body.group, config=body.config.model_dump())
    db.add(e)
    db.commit()
    if body.start:
        jobs.start(db, e)
    db.refresh(e)
    return _public(db, e)


@router.get("/experiments", response_model=list[ExperimentPublic])
def list_experiments(group: str | None = None, db: Session = SessionDep):
    q = (select(Experiment).options(selectinload(Experiment.jobs).selectinload(Job.experiment))
         .order_by(Experiment.id.desc()))
    if group is not None:
        q = q.where(Experiment.group == group)
    return _public_many(db, list(db.scalars(q).all()))


@router.get("/experiments/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment_id: IdPath, db: Session = SessionDep):
    e = db.get(Experiment, experiment_id)
    if e is None:
        raise HTTPException(404, f"experiment {experiment_id} not found")
    return _public(db, e)


@router.post("/experiments/{experiment_id}/jobs", response_model=JobPublic, status_code=201,
             dependencies=[WriteAccess])
def start_job(experiment_id: IdPath, db: Session = SessionDep):
    e = db.get(Experiment, experiment_id)
    if e is None:
        raise HTTPException(404, f"experiment {experiment_id} not found")
    return jobs.to_public(db, jobs.start(db, e))


@router.post("/reproduce", response_model=list[ExperimentPublic], status_code=201, dependencies=[WriteAccess])
def reproduce_table1(body: ReproduceRequest, db: Session = SessionDep):
    """Queue the paper's ten models with the paper preset as one group (Table 1)."""
    from datetime import datetime
    group = body.group or f"table1-{datetime.now():%Y%m%d-%H%M%S}"
    out = []
    for row in catalogue.paper_table1():
        overrides = {k: v for k, v in body.overrides.items() if k != "model"}
        try:
            cfg = ExperimentConfig(model=row["model_id"], **overrides)
        except ValidationError as err:
            raise RequestValidationError([{**d, "loc": ("body", "overrides", *d["loc"])}
                                          for d in err.errors(include_url=False)]) from err
        e = Experiment(name=f"Table 1: {row['paper_name']}", group=group, config=cfg.model_dump())
        db.add(e)
        db.commit()
        jobs.start(db, e)
        db.refresh(e)
        out.append(_public(db, e))
    return out
