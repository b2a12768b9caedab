"""Experiments: a name and the engine's config; starting one queues a job. Groups (a Table 1 reproduction, a
sweep) are cancelled or resumed at once; an experiment can be archived (hidden, data kept) or deleted, or repeated
under more seeds (the same config but the seed, in one group, for a confidence interval)."""
import re
import secrets
import shutil
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, selectinload

from core import catalogue, stats
from core.config import config_warnings, dry_run, web_options
from core.protocol import ACTIVE
from core.settings import get_settings

from .. import jobs
from ..deps import IdPath, SessionDep, WriteAccess
from ..models import EpochMetric, Experiment, Job, JobEvent
from ..schemas import (
    ExperimentConfig,
    ExperimentCreate,
    ExperimentPublic,
    ExperimentUpdate,
    GroupActionPublic,
    JobPublic,
    RepeatPublic,
    RepeatRequest,
    ReproduceRequest,
)
from ..teacher import check_teacher

router = APIRouter(prefix="/api", tags=["experiments"])


def _public_many(db: Session, exps: list[Experiment]) -> list[dict]:
    """Experiments with their jobs: a constant number of queries whatever their number."""
    views = iter(jobs.public_many(db, [j for e in exps for j in e.jobs]))
    return [{"id": e.id, "name": e.name, "group": e.group, "archived": e.archived, "dry_run": e.dry_run,
             "config": e.config, "warnings": config_warnings(e.config),
             "created_at": e.created_at, "jobs": [next(views) for _ in e.jobs]} for e in exps]


def _dry(config: dict, loc: tuple) -> dict:
    """A config as its dry run (core.config.dry_run), checked again (a dry run's values are always valid options,
    but a later change of DRY_RUN must not slip an invalid config through)."""
    try:
        return ExperimentConfig(**dry_run(config)).model_dump()
    except ValidationError as err:
        raise RequestValidationError([{**d, "loc": (*loc, *d["loc"])} for d in err.errors(include_url=False)]) from err


def _public(db: Session, e: Experiment) -> dict:
    return _public_many(db, [e])[0]


@router.post("/experiments", response_model=ExperimentPublic, status_code=201, dependencies=[WriteAccess])
def create_experiment(body: ExperimentCreate, db: Session = SessionDep):
    """Store an experiment (and queue its job unless `start` is false). `dry_run`: core.config.DRY_RUN caps
    those options and the experiment is marked a dry run for good."""
    config = body.config.model_dump()
    if body.dry_run:
        config = _dry(config, ("body", "config"))
    check_teacher(db, config)
    e = Experiment(name=body.name, group=body.group, config=config, dry_run=body.dry_run)
    if body.start:
        jobs.start_new(db, [e])
    else:
        db.add(e)
        db.commit()
    db.refresh(e)
    return _public(db, e)


@router.get("/experiments", response_model=list[ExperimentPublic])
def list_experiments(group: str | None = Query(None, max_length=100),
                     archived: Literal["false", "true", "all"] = Query(
                         "false", description="false: hide archived experiments; true: only them; all: both"),
                     db: Session = SessionDep):
    q = (select(Experiment).options(selectinload(Experiment.jobs).selectinload(Job.experiment))
         .order_by(Experiment.id.desc()))
    if group is not None:
        q = q.where(Experiment.group == group)
    if archived != "all":
        q = q.where(Experiment.archived == (archived == "true"))
    return _public_many(db, list(db.scalars(q).all()))


def _experiment(db: Session, experiment_id: int) -> Experiment:
    e = db.get(Experiment, experiment_id)
    if e is None:
        raise HTTPException(404, f"experiment {experiment_id} not found")
    return e


@router.get("/experiments/{experiment_id}", response_model=ExperimentPublic)
def get_experiment(experiment_id: IdPath, db: Session = SessionDep):
    return _public(db, _experiment(db, experiment_id))


@router.patch("/experiments/{experiment_id}", response_model=ExperimentPublic, dependencies=[WriteAccess])
def update_experiment(experiment_id: IdPath, body: ExperimentUpdate, db: Session = SessionDep):
    """Archive (hide from the lists, keep every job and metric) or bring back."""
    res = db.execute(update(Experiment).where(Experiment.id == experiment_id).values(archived=body.archived))
    db.commit()
    if res.rowcount != 1:
        raise HTTPException(404, f"experiment {experiment_id} not found")
    db.expire_all()
    return _public(db, _experiment(db, experiment_id))


@router.delete("/experiments/{experiment_id}", status_code=204, dependencies=[WriteAccess],
               responses={409: {"description": "a job of it is still queued or running"}})
def delete_experiment(experiment_id: IdPath, db: Session = SessionDep):
    """Delete an experiment with its jobs, their metrics and their run folders. A live job refuses.

    One write transaction: its first statement takes SQLite's write lock, so a resume or a start that races
    with the delete either committed before it (and the delete refuses) or runs after it (and finds nothing)."""
    db.commit()
    touched = db.execute(update(Experiment).where(Experiment.id == experiment_id)
                         .values(archived=Experiment.archived))
    if touched.rowcount != 1:
        db.rollback()
        raise HTTPException(404, f"experiment {experiment_id} not found")
    live_job = db.execute(select(Job.id, Job.status).where(Job.experiment_id == experiment_id,
                                                           Job.status.in_(tuple(ACTIVE)))).first()
    if live_job is not None:
        db.rollback()
        raise HTTPException(409, f"job {live_job.id} of this experiment is {live_job.status}: cancel it first (or "
                                 "archive the experiment to hide it)")
    ids = list(db.scalars(select(Job.id).where(Job.experiment_id == experiment_id)))
    if ids:
        db.execute(delete(JobEvent).where(JobEvent.job_id.in_(ids)))
        db.execute(delete(EpochMetric).where(EpochMetric.job_id.in_(ids)))
        db.execute(delete(Job).where(Job.id.in_(ids)))
    db.execute(delete(Experiment).where(Experiment.id == experiment_id))
    db.commit()
    db.expunge_all()
    runs = get_settings().runs_path
    for i in ids:  # checkpoints and metrics files; a folder another machine holds stays there
        shutil.rmtree(runs / f"job-{i}", ignore_errors=True)


@router.post("/groups/{group}/{action}", response_model=GroupActionPublic, dependencies=[WriteAccess])
def group_action(group: Annotated[str, PathParam(max_length=100)], action: Literal["cancel", "resume"],
                 db: Session = SessionDep):
    """Cancel, or resume, the latest job of every experiment in a group at once."""
    exps = db.scalars(select(Experiment).where(Experiment.group == group)
                      .options(selectinload(Experiment.jobs))).all()
    if not exps:
        raise HTTPException(404, f"group {group!r} not found")
    changed, unchanged = [], {}
    for e in exps:
        if not e.jobs:
            continue
        job = e.jobs[-1]
        try:
            (jobs.cancel if action == "cancel" else jobs.resume)(db, job)
            changed.append(job.id)
        except (jobs.Conflict, jobs.Gone) as err:
            unchanged[job.id] = str(err)
    return {"group": group, "changed": changed, "unchanged": unchanged}


@router.post("/experiments/{experiment_id}/jobs", response_model=JobPublic, status_code=201,
             dependencies=[WriteAccess])
def start_job(experiment_id: IdPath, db: Session = SessionDep):
    return jobs.to_public(db, jobs.start(db, _experiment(db, experiment_id)))


@router.post("/reproduce", response_model=list[ExperimentPublic], status_code=201, dependencies=[WriteAccess])
def reproduce_table1(body: ReproduceRequest, db: Session = SessionDep):
    """Queue the paper's ten models with the paper preset as one group (Table 1); `dry_run`: each a labelled dry
    run (core.config.dry_run of the preset with the overrides)."""
    if "model" in body.overrides:  # Table 1 is the paper's ten models: a model here would be dropped silently
        raise RequestValidationError([{
            "loc": ("body", "overrides", "model"), "type": "value_error", "input": body.overrides["model"],
            "msg": "Table 1 trains the paper's ten models, so overrides.model is not allowed; to train one model, "
                   "create an experiment (POST /api/experiments)"}])
    configs = []  # every row checked before any is stored: a refusal queues nothing
    for row in catalogue.paper_table1():
        try:
            config = ExperimentConfig(model=row["model_id"], **body.overrides).model_dump()
        except ValidationError as err:
            raise RequestValidationError([{**d, "loc": ("body", "overrides", *d["loc"])}
                                          for d in err.errors(include_url=False)]) from err
        if body.dry_run:
            config = _dry(config, ("body", "overrides"))
        check_teacher(db, config, loc=("body", "overrides", "teacher"))
        configs.append((row, config))
    group = body.group or _new_group(db, f"table1-{'dry-run-' if body.dry_run else ''}")
    exps = [Experiment(name=f"Table 1: {row['paper_name']}", group=group, config=config, dry_run=body.dry_run)
            for row, config in configs]
    jobs.start_new(db, exps)
    for e in exps:
        db.refresh(e)
    return _public_many(db, exps)


def _new_group(db: Session, prefix: str) -> str:
    """A group name no experiment has: the time to the second (for people) and a random part (two requests in
    one second, even twenty, get groups of their own; the compare view and the report never mix them)."""
    from datetime import datetime
    while True:
        group = f"{prefix}{datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
        if db.scalar(select(Experiment.id).where(Experiment.group == group)) is None:
            return group


_SEED_SUFFIX = re.compile(r" · seed \d+$")


def base_name(name: str) -> str:
    """An experiment's name without the " · seed N" its repeats carry: every repeat names the same experiment."""
    return _SEED_SUFFIX.sub("", name)


def _repeat_group(e: Experiment) -> str:
    """A group for an experiment that had none, so that its repeats stay together (named after it, within the
    group name's 100 characters)."""
    return f"seeds #{e.id} {base_name(e.name).replace('/', '-')}"[:100].strip()


def _seed_option():
    return next(o for o in web_options() if o.name == "seed")


def _seed(config: dict) -> int:
    """A stored config's seed (one stored before the option existed had its default)."""
    return config.get("seed", _seed_option().default)


@router.post("/experiments/{experiment_id}/repeat", response_model=RepeatPublic, status_code=201,
             dependencies=[WriteAccess])
def repeat_experiment(experiment_id: IdPath, body: RepeatRequest, db: Session = SessionDep):
    """Make the experiment one of `seeds` runs of its config: create the missing repeats (same config but the
    seed, the next seeds unused in its group; same group, dry-run mark and name with " · seed N"), each with a
    queued job. The experiment and the repeats already in its group count, so asking again creates nothing."""
    e = _experiment(db, experiment_id)
    check_teacher(db, e.config)  # its teacher may have been deleted since it was created
    if e.group is None:
        e.group = _repeat_group(e)
        db.commit()
    key = stats.repeat_key(e.config)
    peers = [p for p in db.scalars(select(Experiment).where(Experiment.group == e.group)).all()
             if p.dry_run == e.dry_run and stats.repeat_key(p.config) == key]
    used = {_seed(p.config) for p in peers}
    seed, created, top = _seed(e.config), [], _seed_option().le
    for _ in range(body.seeds - len(peers)):
        while seed in used:
            seed = seed + 1 if seed < top else 0  # past the largest seed: from the smallest unused one
        used.add(seed)
        suffix = f" · seed {seed}"
        r = Experiment(name=base_name(e.name)[:200 - len(suffix)] + suffix, group=e.group,
                       config={**e.config, "seed": seed}, dry_run=e.dry_run)
        db.add(r)
        db.commit()
        jobs.start(db, r)
        db.refresh(r)
        created.append(r)
    return {"group": e.group, "seeds": sorted(used), "created": _public_many(db, created)}
