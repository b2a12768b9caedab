"""config.teacher through the API: a 422 naming config.teacher, in FastAPI's own shape, when the teacher job does not
exist, has not succeeded, or trained on another dataset; a finished teacher on the same dataset is accepted, and
deleting a teacher that a queued student depends on breaks nothing (the worker fails that student clearly)."""
import pytest
from fastapi import HTTPException

from core.protocol import JobStatus

from .conftest import TINY

STUDENT = {**TINY, "model": "deit_tiny_distilled_patch16_224"}


def _job(api, name="teacher", **cfg) -> int:
    r = api.post("/api/experiments", json={"name": name, "config": {**TINY, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()["jobs"][0]["id"]


def _set_status(job_id: int, status: JobStatus) -> None:
    from backend.app.db import session_scope
    from backend.app.models import Job
    with session_scope() as db:
        db.get(Job, job_id).status = status
        db.commit()


def _refused(r, *words):
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    hit = [d for d in detail if d["loc"] == ["body", "config", "teacher"]]
    assert hit, detail
    assert hit[0]["type"] == "value_error"
    for w in words:
        assert w in hit[0]["msg"], hit[0]["msg"]
    return hit[0]["msg"]


# -- the check itself, against the test database ---------------------------------------------------------------------
def _check(config):
    from backend.app.db import session_scope
    from backend.app.teacher import check_teacher
    with session_scope() as db:
        return check_teacher(db, config)


def test_check_teacher_refuses_in_fastapis_shape(api):
    assert _check({**STUDENT, "teacher": None}) is None
    with pytest.raises(HTTPException) as e:
        _check({**STUDENT, "teacher": 99})
    assert e.value.status_code == 422
    [d] = e.value.detail
    assert d["loc"] == ["body", "config", "teacher"] and d["type"] == "value_error" and "job 99 does not exist" in d[
        "msg"]
    t = _job(api)
    with pytest.raises(HTTPException, match="is queued"):
        _check({**STUDENT, "teacher": t})
    _set_status(t, JobStatus.SUCCEEDED)
    assert _check({**STUDENT, "teacher": t}) is None
    assert _check({**STUDENT, "teacher": t, "dataset": "cifar10"}) is None
    with pytest.raises(HTTPException) as e:
        _check({**STUDENT, "teacher": t, "dataset": "cifar100"})
    assert "trained on cifar10, this experiment is on cifar100" in e.value.detail[0]["msg"]


# -- through the API (backend/app/routers/experiments.py calls check_teacher) -----------------------------------------
def test_the_api_refuses_a_teacher_that_is_missing_unfinished_or_foreign(api):
    _refused(api.post("/api/experiments", json={"name": "s", "config": {**STUDENT, "teacher": 1234}}),
             "job 1234 does not exist")
    t = _job(api)
    _refused(api.post("/api/experiments", json={"name": "s", "config": {**STUDENT, "teacher": t}}),
             f"job {t} is queued", "succeeded")
    for status in (JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED):
        _set_status(t, status)
        _refused(api.post("/api/experiments", json={"name": "s", "config": {**STUDENT, "teacher": t}}),
                 f"job {t} is {status.value}")
    _set_status(t, JobStatus.SUCCEEDED)
    _refused(api.post("/api/experiments", json={"name": "s", "config": {**STUDENT, "teacher": t,
                                                                        "dataset": "cifar100"}}),
             "cifar10", "cifar100")
    assert len(api.get("/api/experiments").json()) == 1  # nothing stored for a refused request
    ok = api.post("/api/experiments", json={"name": "s", "config": {**STUDENT, "teacher": t}})
    assert ok.status_code == 201, ok.text
    assert ok.json()["config"]["teacher"] == t and ok.json()["jobs"][0]["status"] == "queued"


def test_a_one_headed_student_is_refused_before_the_teacher_is_looked_up(api):
    msg = _refused(api.post("/api/experiments", json={"name": "s", "config": {**TINY, "teacher": 1234}}),
                   "no distillation head")
    assert "1234" not in msg


def test_deleting_a_teacher_that_a_queued_student_needs_breaks_nothing(api):
    t = _job(api)
    _set_status(t, JobStatus.SUCCEEDED)
    teacher_exp = api.get("/api/experiments").json()[0]["id"]
    s = api.post("/api/experiments", json={"name": "s", "config": {**STUDENT, "teacher": t}}).json()
    assert api.delete(f"/api/experiments/{teacher_exp}").status_code == 204
    student = api.get(f"/api/experiments/{s['id']}")
    assert student.status_code == 200 and student.json()["jobs"][0]["status"] == "queued"
    assert api.get("/api/jobs").status_code == 200
    # a new student, or more seeds of this one, is refused: the teacher is gone
    _refused(api.post("/api/experiments", json={"name": "s2", "config": {**STUDENT, "teacher": t}}),
             f"job {t} does not exist")
    _refused(api.post(f"/api/experiments/{s['id']}/repeat", json={"seeds": 2}), f"job {t} does not exist")


@pytest.mark.parametrize("value", [2**70, "x", 1.5, -1, True])
def test_a_hostile_teacher_in_reproduce_overrides_is_a_422_and_queues_nothing(api, value):
    """Table 1's overrides reached the teacher check before their validation: an id past SQLite's integers gave
    a 500 (found by tests/system/test_fuzz.py). Now every row is validated, then checked, before any is stored."""
    r = api.post("/api/reproduce", json={"overrides": {"teacher": value}})
    assert r.status_code == 422, r.text
    assert any(d["loc"][-1] == "teacher" for d in r.json()["detail"])
    assert api.get("/api/experiments").json() == []


def test_the_refusal_reads_as_a_sentence_without_pydantics_prefix(api):
    r = api.post("/api/experiments", json={"name": "s", "config": {"model": "deit_tiny_patch16_224", "teacher": 1}})
    (d,) = [d for d in r.json()["detail"] if d["loc"][-1] == "teacher"]
    assert d["msg"].startswith("deit_tiny_patch16_224 has no distillation head")
