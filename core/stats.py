"""How sure a number is: repeats of one config under several seeds, summarised with a Student's t interval.

A best validation accuracy from one seed is one draw. "Is my 95.1% below the paper's 95.5%?" is answered by the
spread over seeds: the mean, the sample standard deviation, and the 95% confidence interval of the mean,
mean +- t(0.975, n - 1) * sd / sqrt(n) (Student's t, since the variance is estimated from the same few runs).
The paper's number lies inside the interval or it does not. Torch-free: the backend's compare view, the
report and the CLI read the same functions.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

# t(0.975, df) for df = 1 .. 30, the two-sided 95% critical values of Student's t (any statistics table).
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
         2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639, 2.0595,
         2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
# Beyond 30 degrees of freedom: the table's next rows (past 120, t(120), within 1% of the normal 1.96).
_T975_LARGE = ((40, 2.0211), (60, 2.0003), (120, 1.9799))


def t_critical(df: int) -> float:
    """t(0.975, df): the half-width of a 95% interval in standard errors (conservative between table rows)."""
    if df < 1:
        raise ValueError("a t interval needs at least two runs (df >= 1)")
    if df <= len(_T975):
        return _T975[df - 1]
    prev = _T975[-1]
    for limit, t in _T975_LARGE:  # between rows, the row below's (larger) value: wider, never narrower
        if df < limit:
            return prev
        if df == limit:
            return t
        prev = t
    return prev


# What an accuracy can be: the t interval is clipped to it (mean +- half-width of 0.99 and 1.0 reaches past 100%).
ACCURACY_BOUNDS = (0.0, 1.0)


def summary(values: Iterable[float], reference: float | None = None,
            bounds: tuple[float, float] = ACCURACY_BOUNDS) -> dict[str, Any]:
    """n, mean, sample sd and the 95% interval of the mean, clipped to `bounds` (an accuracy's [0, 1] by default);
    `inside`: whether `reference` (the paper's number) lies in it (None without a reference or with fewer than two
    values, when there is no interval)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    out: dict[str, Any] = {"n": n, "mean": None, "std": None, "ci_low": None, "ci_high": None, "inside": None}
    if not n:
        return out
    mean = sum(xs) / n
    out["mean"] = mean
    if n >= 2:
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = t_critical(n - 1) * sd / math.sqrt(n)
        out.update(std=sd, ci_low=max(mean - half, bounds[0]), ci_high=min(mean + half, bounds[1]))
        if reference is not None:
            out["inside"] = out["ci_low"] <= reference <= out["ci_high"]
    return out


def repeat_key(config: dict[str, Any]) -> str:
    """What makes runs repeats of each other: every result-affecting option but the seed. Runs with the same key
    differ only by their seed (and by options that do not change the result: device). The epoch budget counts
    here though a checkpoint may resume past it: a 2-epoch run's best is no draw of a 20-epoch run's."""
    from .config import result_options, web_options

    keyed = {o.name: o for o in (*result_options(), *web_options()) if o.name == "epochs" or o.affects_result}
    same = {name: config.get(name, o.default) for name, o in keyed.items() if name != "seed"}
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()[:16]


# What the compare view, the CSV and the report say about the paper's number beside a repeat group's interval.
INSIDE, OUTSIDE, NO_PAPER, ONE_RUN = "inside", "outside", "no paper number", "one run: no interval"


def verdict(s: dict[str, Any], reference: float | None) -> str:
    """The paper's number against a `summary`: inside or outside its interval, no paper number (a dataset or a
    model the paper has none for), or no interval yet (fewer than two values)."""
    if reference is None:
        return NO_PAPER
    if s["inside"] is None:
        return ONE_RUN
    return INSIDE if s["inside"] else OUTSIDE


def repeat_groups(runs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs grouped by what makes them repeats (repeat_key of the config, and dry run or not), in order of first
    appearance. Each run: {id, config, value (its best validation accuracy, None before an epoch), reference
    (the paper's number, None without one), dry_run}. Each group: key, ids (every run), the summary of the
    values that exist, the reference and its verdict. A dry run never joins real runs: its numbers are not a
    paper run's. Each seed counts once: a second run of a seed (a clone started twice) is the same draw, not
    another one, and would shrink the interval to nothing; `counted` are the runs the summary rests on,
    `duplicates` those left out."""
    groups: dict[str, dict[str, Any]] = {}
    for r in runs:
        key = repeat_key(r["config"]) + ("-dry" if r.get("dry_run") else "")
        g = groups.setdefault(key, {"key": key, "ids": [], "values": [], "reference": r.get("reference"),
                                    "counted": [], "duplicates": [], "_seeds": set()})
        g["ids"].append(r["id"])
        seed = r["config"].get("seed", 0)
        if r.get("value") is None:
            continue
        if seed in g["_seeds"]:
            g["duplicates"].append(r["id"])
            continue
        g["_seeds"].add(seed)
        g["counted"].append(r["id"])
        g["values"].append(float(r["value"]))
    out = []
    for g in groups.values():
        g.pop("_seeds")
        s = summary(g["values"], g["reference"])
        out.append({**g, **s, "verdict": verdict(s, g["reference"])})
    return out


def mean_curve(curves: Iterable[Iterable[tuple[int, float | None]]]) -> list[dict[str, Any]]:
    """Per epoch, over the runs that reached it: n, mean, sample sd (None for one run), min and max. Each curve is
    [(epoch, value)]; a missing value (non-finite, not recorded) leaves that run out of that epoch."""
    by_epoch: dict[int, list[float]] = {}
    for curve in curves:
        for epoch, v in curve:
            if v is not None:
                by_epoch.setdefault(int(epoch), []).append(float(v))
    out = []
    for epoch in sorted(by_epoch):
        xs = by_epoch[epoch]
        s = summary(xs)
        out.append({"epoch": epoch, "n": s["n"], "mean": s["mean"], "std": s["std"], "min": min(xs), "max": max(xs)})
    return out
