"""The reproduction report (GET /api/report.html, /api/report.md, python -m backend.report_cli): one self-contained
HTML file (Plotly inlined, no http(s) URL in any src or href), the table against Table 1 with seed repeats pooled
into a Student's t interval, the method cards, the environment, the config to run again; a 404 that says why."""
import json
import math
import re
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from core import catalogue, stats

from .conftest import TINY

DENSENET = "densenet201"  # a paper model with a paper curve
ACCS = (0.91, 0.93, 0.95)  # three seeds of one config


def _post(api, name, group, **cfg):
    r = api.post("/api/experiments", json={"name": name, "group": group, "config": {**TINY, **cfg}})
    assert r.status_code == 201, r.text
    return r.json()["jobs"][0]["id"]


def _finish(jid, accs, info=None):
    """As a worker's reports would leave it: finished, an epoch row per accuracy, its info before epoch 1."""
    from backend.app.db import session_scope
    from backend.app.models import EpochMetric, Job
    from core.protocol import JobStatus
    with session_scope() as db:
        job = db.get(Job, jid)
        job.status, job.info = JobStatus.SUCCEEDED, info
        for e, acc in enumerate(accs, 1):
            db.add(EpochMetric(job_id=jid, epoch=e, val_acc=acc, val_loss=1.0 - acc, train_loss=1.0,
                               train_acc=acc, seconds=2.0 * e))
        db.commit()


def _lab(api):
    """A group: three seeds of DenseNet-201 at the paper's depth, one at depth 0 and one at depth 2 (a depth
    sweep), and a job in another group."""
    ids = [_post(api, f"seed {s}", "sweep", model=DENSENET, seed=s) for s in range(3)]
    for jid, acc in zip(ids, ACCS):
        _finish(jid, [acc - 0.05, acc], {"device": "cuda:0", "precision": "fp32", "trainable_params": 1234567})
    k0 = _post(api, "probe", "sweep", model=DENSENET, trainable_blocks=0)
    _finish(k0, [0.80, 0.82], {"device": "cpu", "precision": "fp32", "trainable_params": 5000})
    k2 = _post(api, "two blocks", "sweep", model=DENSENET, trainable_blocks=2)
    _finish(k2, [0.90, 0.96], {"device": "cpu", "precision": "fp32", "trainable_params": 2000000,
                               "torch_version": "2.5.1", "timm_version": "1.0.11",
                               "data_fingerprint": {"train": "abc123", "val": "def456"}})
    other = _post(api, "elsewhere", "other", model="deit_tiny_patch16_224")
    return ids, k0, k2, other


class _Attrs(HTMLParser):
    """Every attribute of every tag (script text is data: the inlined bundle's strings are not attributes)."""
    def __init__(self):
        super().__init__()
        self.attrs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs


def test_the_html_report_is_one_offline_file_with_the_table_the_cards_and_the_config(api):
    ids, k0, k2, other = _lab(api)
    r = api.get("/api/report.html", params={"group": "sweep"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["content-disposition"].startswith("attachment;") and ".html" in r.headers["content-disposition"]
    page = r.text
    parsed = _Attrs()
    parsed.feed(page)
    links = [(k, v) for k, v in parsed.attrs if k in ("src", "href")]
    assert not [v for _, v in links if v and re.match(r"\s*(https?:)?//", v)], links  # nothing fetched from anywhere
    assert "link" not in parsed.tags  # no stylesheet to fetch either
    assert "Plotly.newPlot" in page and len(page) > 1_000_000  # the bundle itself is inside
    assert 'id="fig-curves"' in page and 'id="fig-depth"' in page  # three depths of one model: a sweep
    assert f"Job #{other}:" not in page and f"Job #{k2}:" in page  # only the group's jobs

    paper = catalogue.paper_row(catalogue.get(DENSENET))
    s = stats.summary(ACCS, paper["val_acc"])
    assert f"{100 * s['mean']:.2f}%" in page and f"{100 * s['ci_low']:.2f}% – {100 * s['ci_high']:.2f}%" in page
    assert f"{100 * paper['val_acc']:.2f}%" in page
    assert (stats.INSIDE if s["inside"] else stats.OUTSIDE) in page
    assert stats.ONE_RUN in page  # the depth 0 and 2 rows: one seed each
    assert "Trainable depth" in page and "Known deviations" in page  # the method card, its deviations
    assert "the head alone on frozen features" in page  # depth 0's card
    assert "2.5.1" in page and "abc123" in page and "not recorded" in page  # environment as reported, or not
    cfg = json.dumps({**json.loads(json.dumps(api.get(f"/api/jobs/{k2}").json()["config"]))}, indent=2)
    assert cfg.replace('"', "&quot;") in page  # the exact config, every option
    assert "python -m worker.finetune --model densenet201" in page and "--trainable-blocks 2" in page


def test_the_markdown_report_has_the_table_and_jobs_select_the_runs(api):
    ids, k0, k2, other = _lab(api)
    r = api.get("/api/report.md", params={"jobs": f"{ids[0]},{ids[1]},{ids[2]}"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/markdown")
    assert "attachment;" in r.headers["content-disposition"]
    md = r.text
    table = [line for line in md.splitlines() if line.startswith("| densenet201")]
    assert len(table) == 1, md  # three seeds of one config: one row
    s = stats.summary(ACCS)
    assert f"| 3 | 3 seeds: 0, 1, 2 | {100 * s['mean']:.2f}% |" in table[0]  # how many seeds, and which
    assert "## Depth sweep" not in md  # one depth: no sweep
    assert "```json" in md and '"seed": 2' in md


def test_unknown_groups_and_bad_ids_are_said_never_a_500(api):
    _post(api, "empty", "real", model=DENSENET)
    for params, status, words in [({"group": "nope"}, 404, "no group named"), ({"jobs": "999"}, 404, "job 999"),
                                  ({"jobs": "1,x"}, 422, "job ids"), ({}, 422, "either a group"),
                                  ({"jobs": "\u00b9"}, 422, "job ids"),  # "¹".isdigit(): the fuzz test's 500
                                  ({"jobs": "\u0663"}, 422, "job ids"),  # an Arabic-Indic 3: int() takes it, ids not
                                  ({"group": "real", "jobs": "1"}, 422, "either a group")]:
        for fmt in ("html", "md"):
            r = api.get(f"/api/report.{fmt}", params=params)
            assert r.status_code == status and words in r.json()["detail"], (params, r.text)
    assert api.get("/api/report.html", params={"group": "real"}).status_code == 200  # a queued job: no result yet


def test_the_depth_endpoint_names_the_axis_and_pools_seeds_per_depth(api):
    ids, k0, k2, other = _lab(api)
    axis = api.get("/api/depth").json()["axis"]
    assert axis in api.get("/api/options").json()  # the option as the form knows it
    d = api.get("/api/depth", params={"group": "sweep"}).json()
    pts = {p["depth_text"]: p for p in d["points"]}
    assert list(pts) == ["0", "1", "2"]
    assert pts["1"]["n"] == 3 and math.isclose(pts["1"]["best_val_acc"], sum(ACCS) / 3)
    assert pts["0"]["trainable_params"] == 5000 and pts["2"]["seconds_per_epoch"] == 4.0  # the last epoch (2 x 2 s): after the frozen pass
    assert pts["1"]["paper_val_acc"] == catalogue.paper_row(catalogue.get(DENSENET))["val_acc"]
    assert api.get("/api/depth", params={"group": "nope"}).status_code == 404


@pytest.mark.subprocess
def test_the_command_line_writes_the_report_from_the_labs_database(api, tmp_path):
    _lab(api)
    from core.settings import get_settings
    env = {"BLOCKLAB_HOME": str(get_settings().home), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    for fmt in ("html", "md"):
        out = tmp_path / f"r.{fmt}"
        p = subprocess.run([sys.executable, "-m", "backend.report_cli", "--group", "sweep", "--format", fmt, "--out",
                            str(out)], capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        text = out.read_text()
        assert "densenet201" in text and "95% CI" in text
    p = subprocess.run([sys.executable, "-m", "backend.report_cli", "--group", "nope"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2 and "no group named" in p.stderr


def test_a_seed_run_twice_counts_once_and_a_depth_off_the_paper_says_so(api):
    """A clone of a seed started twice is the same draw: it is left out of n (else the interval shrinks to
    nothing), and the report says which job; a probe's difference from Table 1 names what leaves the paper."""
    twice = [_post(api, "again", "dups", model=DENSENET, seed=0) for _ in range(2)]
    for jid in twice:
        _finish(jid, [0.90])
    probe = _post(api, "probe", "dups", model=DENSENET, trainable_blocks=0)
    _finish(probe, [0.50])
    md = api.get("/api/report.md", params={"group": "dups"}).text
    row = next(line for line in md.splitlines() if f"#{twice[0]}, #{twice[1]}" in line)
    assert f"#{twice[1]} repeat a seed already counted" in row and stats.ONE_RUN in row
    probe_row = next(line for line in md.splitlines() if line.startswith("|") and f"#{probe}" in line
                     and "paper" in line)
    assert "(not the paper's method: " in probe_row and "Trainable blocks" in probe_row


def test_the_command_to_run_a_student_again_names_its_teachers_folder(api):
    from backend.app.reproduction_report import cli_command, option_text
    from core.config import preset
    from core.settings import get_settings
    cmd = cli_command(preset("paper", model="deit_tiny_distilled_patch16_224", teacher=7).to_dict())
    assert f"--teacher 7 --teacher-dir {get_settings().runs_path / 'job-7'}" in cmd
    assert option_text("train_per_class", None) == "all" and option_text("weights", "hub") == "hub"
