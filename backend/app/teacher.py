"""The API's checks on `config.teacher`: the job must exist, have succeeded, and have trained on the same dataset.

What the option declaration cannot know (it needs the database): schemas.py already refuses a teacher for a model
without a distillation head. A refusal is a 422 in FastAPI's own validation shape, naming config.teacher, so the
form shows it beside the field as any other. A teacher deleted after its student was queued is the worker's to
report: the student fails with a clear error (worker/engine/distill.py), nothing else breaks.
"""
from __future__ import annotations

from fastapi import HTTPException
from sqlalchemy.orm import Session

from core.protocol import JobStatus

from .models import Job

LOC = ("body", "config", "teacher")


def _refuse(teacher, msg: str, loc: tuple = LOC):
    raise HTTPException(422, detail=[{"type": "value_error", "loc": list(loc), "msg": msg, "input": teacher}])


def check_teacher(db: Session, config: dict, loc: tuple = LOC) -> None:
    """Raise a 422 when `config["teacher"]` names no job, one that has not succeeded, or one trained on another
    dataset (a teacher of 10 classes cannot teach 100). No teacher: nothing to check."""
    teacher = config.get("teacher")
    if teacher is None or isinstance(teacher, bool) or not isinstance(teacher, int):
        return  # none, or not an id: the config's own validation says so (this runs on validated configs)
    job = db.get(Job, teacher)
    if job is None:
        _refuse(teacher, f"job {teacher} does not exist: a teacher is the id of a finished job of this lab", loc)
    if job.status != JobStatus.SUCCEEDED:
        _refuse(teacher, f"job {teacher} is {job.status}: a teacher must be a job that succeeded (let it finish, "
                         "or choose another)", loc)
    theirs = (job.experiment.config or {}).get("dataset", "cifar10")  # stored before the option: CIFAR-10
    ours = config.get("dataset", "cifar10")
    if theirs != ours:
        _refuse(teacher, f"job {teacher} was trained on {theirs}, this experiment is on {ours}: choose a teacher "
                         f"trained on {ours}", loc)
