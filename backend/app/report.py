"""A reproduction report for a group of jobs (or a list of them): one self-contained HTML file and a Markdown
version, for a reader who has to judge the numbers without this lab.

What a reproduction must show to be checked: what each model ran (its method card), where it ran (device,
precision, torch and timm versions, the data's fingerprint, as the worker reported them before epoch 1), its
numbers against Table 1 (seed repeats summarised with a Student's t interval, core/stats.py), its curves beside the
paper's, every known deviation, and the exact config, as JSON and as the engine's command line, to run it again.

The HTML carries the Plotly bundle inline and its figures as data: it opens offline, with no request to anywhere.
Torch-free, like the rest of the backend: the API (routers/report.py) and the command line (backend/report.py)
build the same report from the database.
"""
from __future__ import annotations

import html
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

from core import catalogue, stats
from core.config import OPTIONS, OPTIONS_BY_NAME, TrainConfig, method_card, preset

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


def _inside_text(s: dict, paper: dict | None) -> str:
    """The compare view's words (core.stats.verdict), and "no result yet" before any epoch."""
    if paper is not None and s["n"] == 0:
        return "no result yet"
    return stats.verdict(s, paper["val_acc"] if paper else None)


def table_rows(runs: list[Run]) -> list[dict]:
    """One row per set of runs that repeat each other (core.stats.repeat_key; a dry run never pools with a real
    run): mean, sd and the 95% interval of their best validation accuracies, against Table 1's number."""
    by_id = {r.job.id: r for r in runs}
    groups = stats.repeat_groups(  # the compare view's grouping and counting: each seed once
        {"id": r.job.id, "config": r.config, "value": r.view["best_val_acc"], "dry_run": r.job.experiment.dry_run,
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
            "jobs": [r.job.id for r in rs], "seeds": [r.config.get("seed") for r in rs], **s,
            "duplicates": g["duplicates"],
            # Not the paper's method: the difference from Table 1 says so where it stands.
            "leaves_preset": [d["label"] for d in (first.card or {}).get("config_deviations", [])
                              if d["option"] != "seed"],
            "paper_val_acc": ref, "inside_text": _inside_text(s, paper),
            "diff": None if ref is None or s["mean"] is None else s["mean"] - ref,
            "paper_trainable_params": paper["trainable_params"] if paper else None,
            "trainable_params": first.view.get("trainable_params"),
        })
    return rows


def depth_points(runs: list[Run], min_depths: int = 2) -> list[dict]:
    """The points of a depth sweep, one per model and depth (seeds pooled): best validation accuracy, seconds per
    epoch and trainable parameters. Only models that ran at `min_depths` depths or more: the report draws a depth
    chart for a sweep (two depths at least), the depth view for any group (one depth is a sweep still running)."""
    by: dict[tuple, list[Run]] = {}
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
        curve = [{"epoch": m.epoch, "val_acc": m.val_acc, "seconds": m.seconds} for m in j.metrics]
        runs.append(Run(job=j, view=v, config=v["config"], card=_card(v["config"]), curve=curve,
                        env=environment(j)))
    if not runs:
        raise NotFound(f"the jobs of {title} were deleted")
    return Report(title=title, runs=runs, rows=table_rows(runs), depth=depth_points(runs),
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
    is not the model's paper preset (the preset the command starts from)."""
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
    if config.get("teacher") is not None:  # the CLI finds the teacher by its run folder
        from core.settings import get_settings
        parts += ["--teacher-dir", str(get_settings().runs_path / f"job-{config['teacher']}")]
    parts += ["--data-dir", "DATA_DIR", "--out", out]
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


def model_text(r: dict) -> str:
    return r["model"] + (f" ({r['paper_name']})" if r.get("paper_name") else "")


TABLE = (("Model", model_text), ("Dataset", lambda r: r["dataset"] or "–"),
         (DEPTH.title, lambda r: r["depth"]), ("Runs", lambda r: str(r["n"])),
         ("Seeds", lambda r: ", ".join(map(str, r["seeds"]))),
         ("Best val acc (mean)", lambda r: pct(r["mean"])), ("SD", lambda r: pct(r["std"])),
         ("95% CI (Student's t)", ci_text),
         ("Paper (Table 1)", lambda r: pct(r["paper_val_acc"]) if r["paper_val_acc"] is not None
          else "no paper number"),
         ("Paper inside the CI", lambda r: r["inside_text"]), ("Mean − paper", lambda r: points(r["diff"]) + (
             f" (not the paper's method: {', '.join(r['leaves_preset'])})" if r["diff"] is not None
             and r["leaves_preset"] else "")),
         ("Trainable params (run / paper)",
          lambda r: f"{count(r['trainable_params'])} / {count(r['paper_trainable_params'])}"),
         ("Jobs", lambda r: ", ".join(f"#{i}" for i in r["jobs"]) + (" (dry run)" if r["dry_run"] else "") + (
             f"; {', '.join(f'#{i}' for i in r['duplicates'])} repeat a seed already counted: left out"
             if r["duplicates"] else "")))

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
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#393b79")


def _plot_text(s: str) -> str:
    """Plotly renders a little HTML in names: user text goes in as entities only."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _layout(title: str, xtitle: str, ytitle: str, **extra) -> dict:
    return {"title": {"text": title, "x": 0, "xanchor": "left"}, "margin": {"t": 48, "r": 16, "b": 40, "l": 64},
            "xaxis": {"title": {"text": xtitle}, "automargin": True},
            "yaxis": {"title": {"text": ytitle}, "automargin": True, "tickformat": ".1%"},
            "legend": {"orientation": "h", "y": -0.25}, "height": 420, **extra}


def curve_figure(report: Report) -> dict:
    colours: dict[str, str] = {}
    traces, papers = [], set()
    for r in report.runs:
        c = colours.setdefault(r.model, _PALETTE[len(colours) % len(_PALETTE)])
        traces.append({"type": "scatter", "mode": "lines+markers", "line": {"color": c},
                       "name": _plot_text(f"#{r.job.id} {r.job.experiment.name}"),
                       "x": [p["epoch"] for p in r.curve], "y": [p["val_acc"] for p in r.curve]})
        name = r.spec.paper_name if r.spec and r.paper else None
        curve = catalogue.paper_curves().get(name) if name else None
        if name and name not in papers:
            papers.add(name)
            if curve:  # the paper's per-epoch curve (three models have one), else its best as a dotted line
                traces.append({"type": "scatter", "mode": "lines", "line": {"color": c, "dash": "dash"},
                               "name": _plot_text(f"paper: {name}"), "x": [p["epoch"] for p in curve],
                               "y": [p["val_acc"] for p in curve]})
            else:
                last = max((len(x.curve) for x in report.runs), default=1) or 1
                traces.append({"type": "scatter", "mode": "lines", "line": {"color": c, "dash": "dot", "width": 1},
                               "name": _plot_text(f"paper best: {name} {pct(r.paper['val_acc'])}"),
                               "x": [1, last], "y": [r.paper["val_acc"]] * 2})
    title = ("Validation accuracy per epoch (the paper's curves dashed, its best dotted)" if papers
             else "Validation accuracy per epoch (no paper number for these runs)")
    return {"data": traces, "layout": _layout(title, "epoch",
                                              "validation accuracy", xaxis={"title": {"text": "epoch"}, "dtick": 1})}


def depth_figure(report: Report) -> dict | None:
    """Best validation accuracy against K, with seconds per epoch and trainable parameters on secondary axes and
    the paper's K = 1 result marked (a star)."""
    if not report.depth:
        return None
    traces, marked = [], set()
    models = list(dict.fromkeys(p["model"] for p in report.depth))
    for i, m in enumerate(models):
        ps = [p for p in report.depth if p["model"] == m]
        c = _PALETTE[i % len(_PALETTE)]
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


# -- HTML ---------------------------------------------------------------------------------------------------------
@cache
def plotly_bundle() -> str:
    """The Plotly bundle the UI serves at /vendor/plotly.min.js (plotly's package data), to inline."""
    import plotly
    return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_text(encoding="utf-8")


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1200px;padding:0 16px;color:#222}
h1{font-size:22px} h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd} h3{font-size:15px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} th,td{border:1px solid #ddd;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f4f4f4} .muted{color:#666} pre{background:#f6f6f6;
padding:8px;overflow:auto;font-size:12px} .inside-yes{color:#1a7f37} .inside-no{color:#b42318}
.figure{min-height:420px} code{background:#f3f3f3;padding:0 3px}
"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _html_table(header: list[str], rows: list[list[str]], cls: str = "", row_classes=None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join((f'<tr class="{_e(row_classes[i])}">' if row_classes else "<tr>")
                   + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for i, r in enumerate(rows))
    return f'<table class="{_e(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _json_script(obj: Any) -> str:
    """JSON safe inside a <script>: no '</' can close it."""
    return json.dumps(obj, default=str).replace("</", "<\\/").replace("<!--", "<\\!--")


def to_html(report: Report) -> str:
    figs = {"fig-curves": curve_figure(report)}
    depth = depth_figure(report)
    if depth:
        figs["fig-depth"] = depth
    parts = [f"<h1>BlockLab reproduction report: {_e(report.title)}</h1>",
             f'<p class="muted">Made {_e(report.made_at)} from {len(report.runs)} job(s). Malpure, Litake, Ingle, '
             "Investigating Transfer Learning Capabilities of Vision Transformers and CNNs by Fine-Tuning a Single "
             "Trainable Block, arXiv:2110.05270 (2021). This file is self-contained: it opens offline.</p>",
             "<h2>Results against Table 1</h2>",
             '<p class="muted">Runs that differ only by their seed are one row: the mean, sample standard deviation '
             "and 95% confidence interval (Student's t) of their best validation accuracies.</p>",
             _html_table([h for h, _ in TABLE], [[f(r) for _, f in TABLE] for r in report.rows], "results",
                         [f"inside-{ {stats.INSIDE: 'yes', stats.OUTSIDE: 'no'}.get(r['inside_text'], 'none')}"
                          for r in report.rows]),
             "<h3>Each run</h3>",
             _html_table(["Job", "Experiment", "Model", DEPTH.title, "Seed", "Status", "Epochs", "Best val acc",
                          "Best epoch", "Seconds, last epoch"],
                         [[f"#{r.job.id}", r.job.experiment.name, r.model, depth_text(r.depth),
                           str(r.config.get("seed")), r.job.status, f"{r.view['epochs_done']}/{r.config['epochs']}",
                           pct(r.view["best_val_acc"]), str(r.view["best_epoch"] or "–"),
                           "–" if r.seconds_per_epoch is None else f"{r.seconds_per_epoch:.1f}"]
                          for r in report.runs], "runs")]
    if depth:
        parts += [f"<h2>Depth sweep: best validation accuracy against {_e(DEPTH.title)}</h2>",
                  '<div class="figure" id="fig-depth"></div>',
                  _html_table([h for h, _ in DEPTH_TABLE], [[f(p) for _, f in DEPTH_TABLE] for p in report.depth],
                              "depth")]
    parts += ["<h2>Curves beside the paper's</h2>", '<div class="figure" id="fig-curves"></div>',
              "<h2>Environment</h2>",
              '<p class="muted">As each worker reported it before its first epoch ("not recorded": the engine did '
              "not report it).</p>",
              _html_table(["Job", *(k for k, _ in ENVIRONMENT)],
                          [[f"#{r.job.id}", *r.env.values()] for r in report.runs], "environment"),
              "<h2>Method cards and deviations</h2>"]
    for _, rs in _cards(report):
        card = rs[0].card
        parts.append(f"<h3>{_e(rs[0].model)} (jobs {_e(_runs_text(rs))})</h3>")
        if card is None:
            parts.append('<p class="muted">Not in the catalogue: no method card.</p>')
            continue
        parts.append(_html_table(["", ""], [[row["label"], row["value"]] for row in card["rows"]], "method-card"))
        dev = card["config_deviations"]
        parts.append("<h4>Where the config leaves the paper's preset</h4>" + (
            _html_table(["Option", "This run", "Paper preset"],
                        [[d["label"], option_text(d["option"], d["value"]), option_text(d["option"], d["paper"])] for d in dev],
                        "config-deviations")
            if dev else "<p>Nowhere: the paper's preset.</p>"))
        parts.append("<h4>Known deviations from the authors' runs</h4>" + (
            "<ul>" + "".join(f"<li>{_e(d['what'])} <em>Likely effect:</em> {_e(d['effect'])}</li>"
                             for d in card["deviations"]) + "</ul>" if card["deviations"] else
            "<p>None known (not a model the paper ran).</p>"))
    parts.append("<h2>Run it again</h2>")
    for r in report.runs:
        parts += [f"<h3>Job #{r.job.id}: {_e(r.job.experiment.name)}</h3>",
                  f'<pre class="config-json">{_e(json.dumps(run_config(r), indent=2))}</pre>',
                  f'<pre class="cli">{_e(cli_command(r.config, f"runs/job-{r.job.id}"))}</pre>']
    script = ("const FIGURES = " + _json_script(figs) + ";\n"
              "for (const [id, f] of Object.entries(FIGURES)) Plotly.newPlot(id, f.data, f.layout, "
              "{displaylogo: false, responsive: true});")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>BlockLab report: {_e(report.title)}</title><style>{_CSS}</style>"
            f"<script>{plotly_bundle()}</script></head><body>{''.join(parts)}<script>{script}</script>"
            "</body></html>\n")


# -- Markdown -----------------------------------------------------------------------------------------------------
def _md(s: Any) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(_md(c) for c in r) + " |" for r in rows)]) + "\n"


def to_markdown(report: Report) -> str:
    out = [f"# BlockLab reproduction report: {report.title}\n",
           f"Made {report.made_at} from {len(report.runs)} job(s). Paper: Malpure, Litake, Ingle, arXiv:2110.05270 "
           "(2021).\n", "## Results against Table 1\n",
           "Runs that differ only by their seed are one row: mean, sample standard deviation and 95% confidence "
           "interval (Student's t) of their best validation accuracies.\n",
           _md_table([h for h, _ in TABLE], [[f(r) for _, f in TABLE] for r in report.rows])]
    if report.depth:
        out += [f"## Depth sweep: best validation accuracy against {DEPTH.title}\n",
                _md_table([h for h, _ in DEPTH_TABLE], [[f(p) for _, f in DEPTH_TABLE] for p in report.depth])]
    out.append("## Curves (validation accuracy per epoch)\n")
    shown = set()
    for r in report.runs:
        out.append(f"- job #{r.job.id} {r.job.experiment.name}: "
                   + (", ".join(pct(p["val_acc"]) for p in r.curve) or "no epoch yet"))
        name = r.spec.paper_name if r.spec and r.paper else None
        curve = catalogue.paper_curves().get(name) if name else None
        if curve and name not in shown:
            shown.add(name)
            out.append(f"  - the paper's {name}: " + ", ".join(pct(p["val_acc"]) for p in curve))
    out += ["", "## Environment\n",
            _md_table(["Job", *(k for k, _ in ENVIRONMENT)], [[f"#{r.job.id}", *r.env.values()] for r in report.runs]),
            "## Method cards and deviations\n"]
    for _, rs in _cards(report):
        card = rs[0].card
        out.append(f"### {rs[0].model} (jobs {_runs_text(rs)})\n")
        if card is None:
            out.append("Not in the catalogue: no method card.\n")
            continue
        out.append(_md_table(["", ""], [[row["label"], row["value"]] for row in card["rows"]]))
        dev = card["config_deviations"]
        out.append("Where the config leaves the paper's preset:\n")
        out.append(_md_table(["Option", "This run", "Paper preset"],
                             [[d["label"], option_text(d["option"], d["value"]), option_text(d["option"], d["paper"])] for d in dev])
                   if dev else "Nowhere: the paper's preset.\n")
        out.append("Known deviations from the authors' runs:\n")
        out.append("\n".join(f"- {d['what']} Likely effect: {d['effect']}" for d in card["deviations"]) + "\n"
                   if card["deviations"] else "None known (not a model the paper ran).\n")
    out.append("## Run it again\n")
    for r in report.runs:
        out += [f"### Job #{r.job.id}: {r.job.experiment.name}\n", "```json", json.dumps(run_config(r), indent=2),
                "```", "```sh", cli_command(r.config, f"runs/job-{r.job.id}"), "```", ""]
    return "\n".join(out)


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

