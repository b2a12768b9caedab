"""A reproduction report for a group of jobs (or a list of them): one self-contained HTML file and a Markdown
version, for a reader who has to judge the numbers without this lab.

What a reproduction must show to be checked: what each model ran (its method card), where it ran (device,
precision, torch and timm versions, the data's fingerprint, as the worker reported them before epoch 1), its
numbers against Table 1 (seed repeats summarised with a Student's t interval, core/stats.py), its curves beside the
paper's, every known deviation, and the exact config, as JSON and as the engine's command line, to run it again. A run
that has not finished (queued, running, cancelled, failed) is said to be so wherever it appears, and no statistic
rests on it: a first epoch's accuracy is no result.

The report is built once as a document (document.py) and rendered to HTML or to Markdown; each run keeps the look
(core.palette) it has in the compare view.

The HTML carries the Plotly bundle inline and its figures as data: it opens offline, with no request to anywhere.
Torch-free, like the rest of the backend: the API (routers/report.py) and the command line (backend/report_cli.py)
build the same report from the database.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core import catalogue, palette, stats
from core.config import OPTIONS, OPTIONS_BY_NAME, TrainConfig, method_card, preset
from core.protocol import JobStatus

from . import document as doc
from . import jobs as job_life
from .models import Experiment, Job

NOT_RECORDED = "not recorded"
DEPTH = OPTIONS_BY_NAME["trainable_blocks"]  # the axis of a depth sweep


class ReportError(Exception):
    """A report that cannot be made, with the HTTP status that says why (404: nothing there; 422: a bad ask)."""
    status = 422


class NotFound(ReportError):
    status = 404


def parse_ids(text: str) -> list[int]:
    """`1,2,3` -> [1, 2, 3] (duplicates once, in order); anything else is a 422 that says what was wrong."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not (p.isascii() and p.isdigit()) or len(p) > 15 for p in parts):
        raise ReportError(f"jobs must be job ids separated by commas, such as 1,2,3 (got {text[:60]!r})")
    return list(dict.fromkeys(int(p) for p in parts))


def select_jobs(db: Session, group: str | None = None, ids: list[int] | None = None) -> tuple[str, list[Job]]:
    """The report's jobs and its title: a group's (every experiment of it, archived ones too, oldest first) or the
    listed ones, in the order given."""
    if (group is None) == (ids is None):
        raise ReportError("give either a group (group=NAME) or job ids (jobs=1,2,3)")
    q = job_life.job_query().options(selectinload(Job.metrics))
    if group is not None:
        found = db.scalars(q.join(Experiment).where(Experiment.group == group).order_by(Job.id)).all()
        if not found:
            known = db.scalar(select(Experiment.id).where(Experiment.group == group).limit(1))
            raise NotFound(f"group {group!r} has no jobs" if known else
                           f"no group named {group!r}; GET /api/experiments lists each experiment's group")
        return f"group {group}", list(found)
    by_id = {j.id: j for j in db.scalars(q.where(Job.id.in_(ids))).all()}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise NotFound(f"job {missing[0]} not found")
    return "jobs " + ", ".join(map(str, ids)), [by_id[i] for i in ids]


# -- what the report says ---------------------------------------------------------------------------------------
@dataclass
class Run:
    job: Job
    view: dict  # the API's job view (job_view.public_many)
    config: dict  # every option as it ran
    card: dict | None
    curve: list[dict]  # [{epoch, val_acc, seconds}]
    env: dict[str, str]
    look: dict = field(default_factory=dict)  # its colour and marker (job_view.looks), as every view draws it

    @property
    def finished(self) -> bool:
        """Only a run that succeeded has a result; any other is marked and left out of the statistics."""
        return self.job.status == JobStatus.SUCCEEDED

    @property
    def status_text(self) -> str:
        """"succeeded", or what an unfinished run is: its status and how far it got."""
        if self.finished:
            return self.job.status
        return f"{self.job.status}, {self.view['epochs_done']} of {self.config['epochs']} epochs: not a result"

    @property
    def model(self) -> str:
        return self.config["model"]

    @property
    def spec(self) -> catalogue.ModelSpec | None:
        return catalogue.get(self.model)

    @property
    def paper(self) -> dict | None:
        return catalogue.paper_row(self.spec, self.config.get("dataset", "cifar10")) if self.spec else None

    @property
    def depth(self) -> int | None:
        return self.config.get(DEPTH.name, DEPTH.default)

    @property
    def seconds_per_epoch(self) -> float | None:
        """The last epoch's seconds: the first epochs also run the frozen part (once per image and flip state),
        which a reused cache skips, so only the last one compares across depths: the training cost."""
        s = [r["seconds"] for r in self.curve if r["seconds"] is not None]
        return s[-1] if s else None


@dataclass
class Report:
    title: str
    runs: list[Run]
    rows: list[dict] = field(default_factory=list)  # the table against Table 1, one row per set of seed repeats
    depth: list[dict] = field(default_factory=list)  # the depth sweep's points; empty when it is none
    made_at: str = ""


def depth_text(k: int | None) -> str:
    """A depth as a person reads it: 0, 1, 2 ... or "all" (full fine-tuning)."""
    return "all" if k is None else str(k)


# What the worker's info (or, for a finished run, its summary) must carry for each environment line; the first key
# found is used. torch, timm and the data fingerprint are not reported yet by worker/engine/train.py (see the report
# of issue 14): until they are, the report says "not recorded".
ENVIRONMENT = (("Device", ("device",)), ("Precision", ("precision",)), ("TF32", ("tf32",)),
               ("torch", ("torch_version", "torch")), ("timm", ("timm_version", "timm")),
               ("Data fingerprint", ("data_fingerprint",)), ("Training images", ("train_images",)),
               ("Validation images", ("val_images",)), ("Image size", ("image_size",)))


def _env_value(v: Any) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_env_value(x)}" for k, x in v.items())
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


def environment(job: Job) -> dict[str, str]:
    src = {**(job.summary or {}), **(job.info or {})}
    if not src.get("device") and job.device:
        src["device"] = job.device
    out = {}
    for label, keys in ENVIRONMENT:
        v = next((src[k] for k in keys if src.get(k) not in (None, "")), None)
        out[label] = NOT_RECORDED if v is None else _env_value(v)
    return out


def _card(config: dict) -> dict | None:
    """The run's method card; None for a model outside the catalogue (the CLI may run any timm name)."""
    try:
        return method_card(TrainConfig.from_dict(config))
    except (ValueError, TypeError):
        return None


NO_FINISHED_RUN = "no finished run"


def _inside_text(s: dict, paper: dict | None) -> str:
    """The compare view's words (core.stats.verdict), and "no finished run" before any run has a result."""
    if s["n"] == 0:
        return NO_FINISHED_RUN
    return stats.verdict(s, paper["val_acc"] if paper else None)


def table_rows(runs: list[Run]) -> list[dict]:
    """One row per set of runs that repeat each other (core.stats.repeat_key; a dry run never pools with a real
    run): mean, sd and the 95% interval of their best validation accuracies, against Table 1's number. Only finished
    runs count; the others are named in the row as not counted."""
    by_id = {r.job.id: r for r in runs}
    groups = stats.repeat_groups(  # the compare view's grouping and counting: each seed once
        {"id": r.job.id, "config": r.config, "value": r.view["best_val_acc"] if r.finished else None,
         "dry_run": r.job.experiment.dry_run,
         "reference": r.paper["val_acc"] if r.paper else None} for r in runs)
    rows = []
    for g in groups:
        rs = [by_id[i] for i in g["ids"]]
        first, dry = rs[0], bool(rs[0].job.experiment.dry_run)
        paper = first.paper
        ref = g["reference"]
        s = {k: g[k] for k in ("n", "mean", "std", "ci_low", "ci_high", "inside")}
        rows.append({
            "model": first.model, "paper_name": first.spec.paper_name if first.spec else None,
            "dataset": first.config.get("dataset"), "depth": depth_text(first.depth), "dry_run": dry,
            "jobs": [r.job.id for r in rs], "seeds": [by_id[i].config.get("seed") for i in g["counted"]], **s,
            "duplicates": g["duplicates"],
            "unfinished": [(r.job.id, r.job.status) for r in rs if not r.finished],
            # Not the paper's method: the difference from Table 1 says so where it stands.
            "leaves_preset": [d["label"] for d in (first.card or {}).get("config_deviations", [])
                              if d["option"] != "seed"],
            "paper_val_acc": ref, "inside_text": _inside_text(s, paper),
            "diff": None if ref is None or s["mean"] is None else s["mean"] - ref,
            "paper_trainable_params": paper["trainable_params"] if paper else None,
            "trainable_params": first.view.get("trainable_params"),
        })
    return rows


def depth_points(runs: list[Run], min_depths: int = 2, finished_only: bool = False) -> list[dict]:
    """The points of a depth sweep, one per model and depth (seeds pooled): best validation accuracy, seconds per
    epoch and trainable parameters. Only models that ran at `min_depths` depths or more: the report draws a depth
    chart for a sweep (two depths at least), the depth view for any group (one depth is a sweep still running).
    `finished_only`: the report's points rest on finished runs alone; the live depth view follows running ones."""
    by: dict[tuple, list[Run]] = {}
    if finished_only:
        runs = [r for r in runs if r.finished]
    for r in runs:
        if not r.job.experiment.dry_run or all(x.job.experiment.dry_run for x in runs):
            by.setdefault((r.model, r.config.get("dataset"), r.depth), []).append(r)
    depths: dict[tuple, set] = {}
    for model, dataset, k in by:
        depths.setdefault((model, dataset), set()).add(k)
    swept = {m for m, ks in depths.items() if len(ks) >= min_depths}
    points = []
    for (model, dataset, k), rs in by.items():
        if (model, dataset) not in swept:
            continue
        s = stats.summary([r.view["best_val_acc"] for r in rs])
        secs = [r.seconds_per_epoch for r in rs if r.seconds_per_epoch is not None]
        params = next((r.view.get("trainable_params") for r in rs if r.view.get("trainable_params")), None)
        paper = rs[0].paper
        points.append({"model": model, "dataset": dataset, "depth": k, "depth_text": depth_text(k),
                       "n": s["n"], "best_val_acc": s["mean"], "std": s["std"], "ci_low": s["ci_low"],
                       "ci_high": s["ci_high"],
                       "seconds_per_epoch": sum(secs) / len(secs) if secs else None,
                       "trainable_params": params, "jobs": [r.job.id for r in rs],
                       "paper_val_acc": paper["val_acc"] if paper else None,
                       "paper_name": rs[0].spec.paper_name if rs[0].spec else None})
    # K ascending, "all" (None) last
    points.sort(key=lambda p: (p["model"], p["depth"] is None, p["depth"] or 0))
    return points


def build(db: Session, group: str | None = None, ids: list[int] | None = None) -> Report:
    title, found = select_jobs(db, group, ids)
    views = {v["id"]: v for v in job_life.public_many(db, found)}
    runs = []
    for j in found:
        if j.id not in views:  # deleted while this request read
            continue
        v = views[j.id]
        curve = [{"epoch": m.epoch, "val_acc": m.val_acc, "val_loss": m.val_loss, "seconds": m.seconds}
                 for m in j.metrics]
        runs.append(Run(job=j, view=v, config=v["config"], card=_card(v["config"]), curve=curve,
                        env=environment(j), look=v["look"]))
    if not runs:
        raise NotFound(f"the jobs of {title} were deleted")
    return Report(title=title, runs=runs, rows=table_rows(runs), depth=depth_points(runs, finished_only=True),
                  made_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))


def option_text(name: str, v: Any) -> str:
    """An option's value as the form says it: an empty value by its meaning ("all", "none"), text unquoted."""
    if v is None:
        o = OPTIONS_BY_NAME.get(name)
        return (o.none_means if o and o.none_means else "none")
    if isinstance(v, bool):
        return "on" if v else "off"
    return str(v)


# -- the exact config again -------------------------------------------------------------------------------------
def _flag_value(o, v) -> str:
    if v is None:  # finetune.py's parser reads "none"/"all" as an empty value
        return "all" if (o.none_means or "").startswith("all") else "none"
    return str(v)


def cli_command(config: dict, out: str = "runs/again") -> str:
    """`python -m worker.finetune ...` that runs `config` again: the engine's flags, derived from the options'
    declaration as finetune.py derives them (--option-name; booleans --x / --no-x), for every option whose value
    is not the model's paper preset (the preset the command starts from), with the lab's data and weights folders
    (weights=local then reads the same file as the job did)."""
    base = preset("paper", model=config["model"]).to_dict()
    parts = ["python", "-m", "worker.finetune", "--model", config["model"]]
    for o in OPTIONS:
        if o.name == "model":
            continue
        v = config.get(o.name, o.default)
        if v == base.get(o.name):
            continue
        flag = "--" + o.name.replace("_", "-")
        if o.type is bool:
            parts.append(flag if v else "--no-" + flag[2:])
        else:
            parts += [flag, _flag_value(o, v)]
    from core.settings import get_settings
    s = get_settings()  # the lab's own folders, so the command runs as printed on the lab's machine
    if config.get("teacher") is not None:  # the CLI finds the teacher by its run folder
        parts += ["--teacher-dir", str(s.runs_path / f"job-{config['teacher']}")]
    if config.get("weights", "hub") in ("hub", "local"):  # the lab's weights: its hub cache, its local files
        parts += ["--weights-dir", str(s.weights_path)]
    parts += ["--data-dir", str(s.data_path), "--out", out]
    return " ".join(shlex.quote(p) for p in parts)


def run_config(run: Run) -> dict:
    """The config a run ran with, every option named (an option its stored config lacked at its default)."""
    return dict(run.config)


# -- shared formatting ------------------------------------------------------------------------------------------
def pct(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * v:.{digits}f}%"


def points(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.2f} pt"


def count(v: int | None) -> str:
    return "–" if v is None else f"{v:,}"


def ci_text(r: dict) -> str:
    return "–" if r["ci_low"] is None else f"{pct(r['ci_low'])} – {pct(r['ci_high'])}"


def jobs_text(r: dict) -> str:
    """A row's jobs, each unfinished one with its status: "#1, #2, #5 (running: unfinished, not counted)"."""
    status = dict(r["unfinished"])
    jobs = ", ".join(f"#{i}" + (f" ({status[i]}: unfinished, not counted)" if i in status else "") for i in r["jobs"])
    return jobs + (" (dry run)" if r["dry_run"] else "") + (
        f"; {', '.join(f'#{i}' for i in r['duplicates'])} repeat a seed already counted: left out"
        if r["duplicates"] else "")


def seeds_text(seeds: list) -> str:
    """How many seeds a row rests on, and which: "3 seeds: 0, 1, 2"."""
    if not seeds:
        return "none finished"
    return f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}: " + ", ".join(map(str, seeds))


def model_text(r: dict) -> str:
    return r["model"] + (f" ({r['paper_name']})" if r.get("paper_name") else "")


TABLE = (("Model", model_text), ("Dataset", lambda r: r["dataset"] or "–"),
         (DEPTH.title, lambda r: r["depth"]), ("Runs", lambda r: str(r["n"])),
         ("Seeds", lambda r: seeds_text(r["seeds"])),
         ("Best val acc (mean)", lambda r: pct(r["mean"])), ("SD", lambda r: pct(r["std"])),
         ("95% CI (Student's t)", ci_text),
         ("Paper (Table 1)", lambda r: pct(r["paper_val_acc"]) if r["paper_val_acc"] is not None
          else "no paper number"),
         ("Paper inside the CI", lambda r: r["inside_text"]), ("Mean − paper", lambda r: points(r["diff"]) + (
             f" (not the paper's method: {', '.join(r['leaves_preset'])})" if r["diff"] is not None
             and r["leaves_preset"] else "")),
         ("Trainable params (run / paper)",
          lambda r: f"{count(r['trainable_params'])} / {count(r['paper_trainable_params'])}"),
         ("Jobs", jobs_text))

DEPTH_TABLE = (("Model", lambda p: p["model"]), (DEPTH.title, lambda p: p["depth_text"]),
               ("Runs", lambda p: str(p["n"])), ("Best val acc", lambda p: pct(p["best_val_acc"])),
               ("Seconds, last epoch", lambda p: "–" if p["seconds_per_epoch"] is None
                else f"{p['seconds_per_epoch']:.1f}"),
               ("Trainable params", lambda p: count(p["trainable_params"])),
               ("Paper (K = 1)", lambda p: pct(p["paper_val_acc"])),
               ("Jobs", lambda p: ", ".join(f"#{i}" for i in p["jobs"])))


def _cards(report: Report) -> list[tuple[str, list[Run]]]:
    """Runs by method card: runs whose cards are equal share one (seed repeats do)."""
    out: dict[str, list[Run]] = {}
    for r in report.runs:
        out.setdefault(json.dumps(r.card, sort_keys=True, default=str), []).append(r)
    return [(k, rs) for k, rs in out.items()]


def _runs_text(rs: list[Run]) -> str:
    return ", ".join(f"#{r.job.id}" for r in rs)


# -- figures (Plotly data; the HTML draws them with the inlined bundle) -----------------------------------------
def _plot_text(s: str) -> str:
    """Plotly renders a little HTML in names: user text goes in as entities only."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _layout(title: str, xtitle: str, ytitle: str, **extra) -> dict:
    return {"title": {"text": title, "x": 0, "xanchor": "left"}, "margin": {"t": 48, "r": 16, "b": 40, "l": 64},
            "xaxis": {"title": {"text": xtitle}, "automargin": True},
            "yaxis": {"title": {"text": ytitle}, "automargin": True, "tickformat": ".1%"},
            "legend": {"orientation": "h", "y": -0.25}, "height": 420, **extra}


def run_name(r: Run) -> str:
    """A run as its curve and its list item name it: unfinished ones say so."""
    return f"#{r.job.id} {r.job.experiment.name}" + ("" if r.finished else f" ({r.job.status})")


def _paper_curve(r: Run) -> tuple[str | None, list[dict] | None]:
    name = r.spec.paper_name if r.spec and r.paper else None
    return name, (catalogue.paper_curves().get(name) if name else None)


# The curves the report draws: (metric, the paper's key in catalogue.paper_curves, title, axis, tick format).
CURVES = (("val_acc", "Validation accuracy per epoch", "validation accuracy", ".1%"),
          ("val_loss", "Validation loss per epoch", "validation loss (cross-entropy)", ""))


def curve_figure(report: Report, metric: str = "val_acc") -> dict:
    """Each run's curve in its look (core.palette), the paper's in its model's colour dashed (its best dotted where
    it has no curve). The paper's loss is Keras' (the head's L2 penalty included): named so."""
    _, title, axis, fmt = next(c for c in CURVES if c[0] == metric)
    traces, papers = [], set()
    for r in report.runs:
        look = r.look
        traces.append({"type": "scatter", "mode": "lines+markers", "line": {"color": look["colour"]},
                       "marker": {"symbol": look["symbol"], "color": look["colour"], "size": 8},
                       "name": _plot_text(run_name(r)),
                       "x": [p["epoch"] for p in r.curve], "y": [p[metric] for p in r.curve]})
        name, curve = _paper_curve(r)
        if not name or name in papers:
            continue
        papers.add(name)
        c = look["model_colour"]
        points = [p for p in curve or [] if p.get(metric) is not None]
        if points:  # the paper's per-epoch curve (three models have one), else its best as a dotted line
            label = f"paper: {name}" + (" (Keras val_loss, L2 penalty included)" if metric == "val_loss" else "")
            traces.append({"type": "scatter", "mode": "lines", "line": {"color": c, "dash": palette.PAPER_DASH},
                           "name": _plot_text(label), "x": [p["epoch"] for p in points],
                           "y": [p[metric] for p in points]})
        elif metric == "val_acc":
            last = max((len(x.curve) for x in report.runs), default=1) or 1
            traces.append({"type": "scatter", "mode": "lines",
                           "line": {"color": c, "dash": palette.PAPER_BEST_DASH, "width": 1},
                           "name": _plot_text(f"paper best: {name} {pct(r.paper['val_acc'])}"),
                           "x": [1, last], "y": [r.paper["val_acc"]] * 2})
    title += (" (the paper's curves dashed, its best dotted)" if papers else " (no paper number for these runs)")
    return {"data": traces, "layout": _layout(title, "epoch", axis, xaxis={"title": {"text": "epoch"}, "dtick": 1},
                                              yaxis={"title": {"text": axis}, "automargin": True,
                                                     "tickformat": fmt})}


def depth_figure(report: Report) -> dict | None:
    """Best validation accuracy against K, with seconds per epoch and trainable parameters on secondary axes and
    the paper's K = 1 result marked (a star)."""
    if not report.depth:
        return None
    traces, marked = [], set()
    models = list(dict.fromkeys(p["model"] for p in report.depth))
    for m in models:
        ps = [p for p in report.depth if p["model"] == m]
        c = palette.model_colour(m)
        x = [p["depth_text"] for p in ps]
        traces.append({"type": "scatter", "mode": "lines+markers", "name": _plot_text(f"{m}: best val acc"),
                       "x": x, "y": [p["best_val_acc"] for p in ps], "line": {"color": c},
                       "error_y": {"type": "data", "symmetric": False, "visible": any(p["std"] for p in ps),
                                   "array": [None if p["ci_high"] is None else p["ci_high"] - p["best_val_acc"]
                                             for p in ps],
                                   "arrayminus": [None if p["ci_low"] is None else p["best_val_acc"] - p["ci_low"]
                                                  for p in ps]}})
        traces.append({"type": "bar", "name": _plot_text(f"{m}: seconds, last epoch"), "x": x, "yaxis": "y2",
                       "y": [p["seconds_per_epoch"] for p in ps], "marker": {"color": c, "opacity": 0.25}})
        traces.append({"type": "scatter", "mode": "lines+markers", "name": _plot_text(f"{m}: trainable params"),
                       "x": x, "yaxis": "y3", "y": [p["trainable_params"] for p in ps],
                       "line": {"color": c, "dash": "dot"}, "marker": {"symbol": "square"}})
        ref = next((p["paper_val_acc"] for p in ps if p["paper_val_acc"] is not None), None)
        if ref is not None and m not in marked:
            marked.add(m)
            traces.append({"type": "scatter", "mode": "markers+text", "x": ["1"], "y": [ref],
                           "name": _plot_text(f"paper, K = 1: {pct(ref)}"), "text": ["paper K = 1"],
                           "textposition": "top center",
                           "marker": {"symbol": "star", "size": 16, "color": c, "line": {"color": "#000", "width": 1}}})
    order = list(dict.fromkeys(p["depth_text"] for p in report.depth))
    lay = _layout(f"Best validation accuracy against {DEPTH.title} (paper's K = 1 starred)", DEPTH.title,
                  "best validation accuracy",
                  xaxis={"title": {"text": DEPTH.title}, "type": "category", "categoryorder": "array",
                         "categoryarray": order, "domain": [0, 0.84]},
                  yaxis2={"title": {"text": "seconds, last epoch (after the frozen pass)"}, "overlaying": "y", "side": "right",
                          "showgrid": False, "rangemode": "tozero"},
                  yaxis3={"title": {"text": "trainable params"}, "overlaying": "y", "side": "right",
                          "anchor": "free", "position": 1.0, "showgrid": False, "type": "log",
                          "tickformat": ".2~s", "automargin": True})
    return {"data": traces, "layout": lay}


# -- the document, built once ------------------------------------------------------------------------------------
CITATION = ("Malpure, Litake, Ingle, Investigating Transfer Learning Capabilities of Vision Transformers and CNNs by "
            "Fine-Tuning a Single Trainable Block, arXiv:2110.05270 (2021).")
RUN_COLUMNS = ["Job", "Look", "Experiment", "Model", DEPTH.title, "Seed", "Status", "Epochs", "Best val acc",
               "Best epoch", "Seconds, last epoch"]


def _run_row(r: Run) -> list:
    best = pct(r.view["best_val_acc"])
    look = doc.Swatch(r.look["colour"], r.look["symbol"], r.look["glyph"])
    return [f"#{r.job.id}", [look], r.job.experiment.name, r.model, depth_text(r.depth), str(r.config.get("seed")),
            r.status_text, f"{r.view['epochs_done']}/{r.config['epochs']}",
            best if r.finished or r.view["best_val_acc"] is None else f"{best} (unfinished: not a result)",
            str(r.view["best_epoch"] or "–"),
            "–" if r.seconds_per_epoch is None else f"{r.seconds_per_epoch:.1f}"]


def _curve_numbers(report: Report, metric: str) -> list:
    """The curves as numbers (what Markdown shows for the figure): each run's, then its paper model's once."""
    fmt = pct if metric == "val_acc" else (lambda v: "–" if v is None else f"{v:.4f}")
    items, shown = [], set()
    for r in report.runs:
        subs = []
        name, curve = _paper_curve(r)
        points = [p for p in curve or [] if p.get(metric) is not None]
        if points and name not in shown:
            shown.add(name)
            subs.append(f"the paper's {name}" + (" (Keras val_loss, L2 penalty included)" if metric == "val_loss"
                                                  else "") + ": " + ", ".join(fmt(p[metric]) for p in points))
        items.append((f"job {run_name(r)}: " + (", ".join(fmt(p[metric]) for p in r.curve) or "no epoch yet"), subs))
    return [doc.Bullets(items)]


def document(report: Report) -> doc.Document:
    """What the report says, once: rendered by to_html and to_markdown."""
    unfinished = [r for r in report.runs if not r.finished]
    intro = f"Made {report.made_at} from {len(report.runs)} job(s). Paper: {CITATION}"
    if unfinished:
        named = ", ".join(f"#{r.job.id} {r.job.status}" for r in unfinished)
        intro += (f" {len(unfinished)} of them not finished ({named}): "
                  "marked as such, and left out of every statistic.")
    b: list = [doc.Para(intro, muted=True), doc.Heading(2, "Results against Table 1"),
               doc.Para("Runs that differ only by their seed are one row: the mean, sample standard deviation and 95% "
                        "confidence interval (Student's t) of their best validation accuracies, over finished runs "
                        "only.", muted=True),
               doc.Table([h for h, _ in TABLE], [[f(r) for _, f in TABLE] for r in report.rows], "results",
                         [f"inside-{ {stats.INSIDE: 'yes', stats.OUTSIDE: 'no'}.get(r['inside_text'], 'none')}"
                          for r in report.rows]),
               doc.Heading(3, "Each run"),
               doc.Table(RUN_COLUMNS, [_run_row(r) for r in report.runs], "runs",
                         [f"status-{r.job.status}" for r in report.runs])]
    depth = depth_figure(report)
    if depth:
        b += [doc.Heading(2, f"Depth sweep: best validation accuracy against {DEPTH.title}"),
              doc.Figure("fig-depth", depth),
              doc.Table([h for h, _ in DEPTH_TABLE], [[f(p) for _, f in DEPTH_TABLE] for p in report.depth], "depth")]
    b.append(doc.Heading(2, "Curves beside the paper's"))
    for metric, title, _, _ in CURVES:
        b += [doc.Heading(3, title), doc.Figure("fig-curves" if metric == "val_acc" else f"fig-{metric}",
                                                curve_figure(report, metric), _curve_numbers(report, metric))]
    b += [doc.Heading(2, "Environment"),
          doc.Para('As each worker reported it before its first epoch ("not recorded": the engine did not report it).',
                   muted=True),
          doc.Table(["Job", *(k for k, _ in ENVIRONMENT)], [[f"#{r.job.id}", *r.env.values()] for r in report.runs],
                    "environment"),
          doc.Heading(2, "Method cards and deviations")]
    for _, rs in _cards(report):
        card = rs[0].card
        b.append(doc.Heading(3, f"{rs[0].model} (jobs {_runs_text(rs)})"))
        if card is None:
            b.append(doc.Para("Not in the catalogue: no method card.", muted=True))
            continue
        b.append(doc.Table(["", ""], [[row["label"], row["value"]] for row in card["rows"]], "method-card"))
        # The run's length (epochs) changes no epoch's result, but a 3-epoch run is not the paper's 20: listed,
        # marked as the length, as the job page's card lists it.
        dev = [(d, "") for d in card["config_deviations"]] + [
            (d, " (the run's length)") for d in card.get("length_differences") or []]
        b += [doc.Heading(4, "Where the config leaves the paper's preset"),
              doc.Table(["Option", "This run", "Paper preset"],
                        [[d["label"] + note, option_text(d["option"], d["value"]), option_text(d["option"], d["paper"])]
                         for d, note in dev], "config-deviations") if dev else doc.Para("Nowhere: the paper's preset."),
              doc.Heading(4, "Known deviations from the authors' runs"),
              doc.Bullets([([d["what"] + " ", doc.Em("Likely effect:"), " " + d["effect"]], [])
                           for d in card["deviations"]]) if card["deviations"]
              else doc.Para("None known (not a model the paper ran).")]
    b.append(doc.Heading(2, "Run it again"))
    for r in report.runs:
        b += [doc.Heading(3, f"Job #{r.job.id}: {r.job.experiment.name}"),
              doc.Code(json.dumps(run_config(r), indent=2), "json", "config-json"),
              doc.Code(cli_command(r.config, f"runs/job-{r.job.id}"), "sh", "cli")]
    return doc.Document(f"BlockLab reproduction report: {report.title}", b)


# -- the two renderings -------------------------------------------------------------------------------------------
@cache
def plotly_bundle() -> str:
    """The Plotly bundle the UI serves at /vendor/plotly.min.js (plotly's package data), to inline."""
    import plotly
    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd} h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px;display:block;max-width:100%;overflow-x:auto} th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f4f4f4} .muted{color:#666} pre{background:#f6f6f6;
padding:8px;overflow:auto;font-size:12px} .inside-yes{color:#1a7f37} .inside-no{color:#b42318}
.figure{min-height:420px} code{background:#f3f3f3;padding:0 3px}
.look{font-size:15px}
tr.status-running,tr.status-queued,tr.status-cancelling,tr.status-cancelled,tr.status-failed{background:#fff6e0}
"""


def to_html(report: Report) -> str:
    """One HTML file that opens offline: the Plotly bundle inline, the figures as data."""
    d = document(report)
    d.blocks.insert(1, doc.Para("This file is self-contained: it opens offline.", muted=True))
    return doc.to_html(d, head=f"<script>{plotly_bundle()}</script>", css=_CSS)


def to_markdown(report: Report) -> str:
    return doc.to_markdown(document(report))


def filename(report: Report, ext: str) -> str:
    """An ASCII file name (a header carries it): the title's letters and digits, the rest as dashes."""
    slug = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "-" for c in report.title)
    slug = re.sub("-{2,}", "-", slug).strip("-")[:80] or "report"  # "jobs 7, 10" -> jobs-7-10
    return f"blocklab-report-{slug}.{ext}"


def depth_view(db: Session, group: str) -> dict:
    """The depth view's data (GET /api/depth?group=): the sweep's points and the runs they pool."""
    report = build(db, group=group)
    return {"group": group, "points": depth_points(report.runs, min_depths=1),
            "runs": [{"id": r.job.id, "name": r.job.experiment.name, "model": r.model, "depth": r.depth,
                      "depth_text": depth_text(r.depth), "status": r.job.status,
                      "best_val_acc": r.view["best_val_acc"], "seconds_per_epoch": r.seconds_per_epoch,
                      "trainable_params": r.view.get("trainable_params"),
                      "paper_val_acc": r.view.get("paper_val_acc")} for r in report.runs]}

