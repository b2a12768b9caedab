"""The latest self-report of every worker (worker/queue/self_report.py), fed by event ingestion, read by plans.

In memory: a report is advice about now, resent every `worker_report_s`, so nothing is lost by a backend restart
but the minute until the next one (a plan then says no worker has reported yet). A report older than three
intervals is stale: its worker has likely gone.
"""
from __future__ import annotations

import math
import threading
import time

_lock = threading.Lock()
_reports: dict[str, dict] = {}


MAX_EXACT = 2**53  # the largest integer a float holds exactly: far above any byte count or time a worker reports


def _json_safe(v):
    """The report as a JSON answer can carry it and the plan compute with it: a NaN or an infinity (which the broker's
    JSON lets through, and no real measurement gives), or an integer beyond what a float holds exactly, becomes None,
    unknown, at any depth."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > MAX_EXACT:
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def figure(v, low: float = -math.inf, high: float = math.inf) -> float | None:
    """A number from a worker's report or event, as the backend may compute with it: finite and within [low, high];
    None (unknown) for a bool, a string, a NaN or an integer too large for a float, which a broken or forged report
    may carry."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) and low <= f <= high else None


def store(ev: dict) -> None:
    """Keep a `worker` event's report, as the latest of its worker."""
    report = ev.get("worker")
    if not isinstance(report, dict) or not isinstance(report.get("name"), str) or not report["name"]:
        return  # a worker's name is a string (its Celery hostname): anything else is not a worker's report
    ts = figure(ev.get("ts"))  # its send time; where it carries none a clock could give, now
    ts = time.time() if ts is None else ts
    with _lock:
        _reports[report["name"]] = {**_json_safe(report), "reported_at": ts}


def is_stale(report: dict, now: float | None = None) -> bool:
    interval = figure(report.get("interval_s"), low=0) or 30.0  # 0 or none: the default interval
    return (now or time.time()) - report["reported_at"] > 3 * interval + 5


def latest() -> dict | None:
    """The report a plan uses: the freshest of the live workers (any of them may take the next job), else the
    freshest stale one (said to be stale), else None."""
    with _lock:
        reports = list(_reports.values())
    if not reports:
        return None
    now = time.time()
    live = [r for r in reports if not is_stale(r, now)]
    return max(live or reports, key=lambda r: r["reported_at"])


def all_reports() -> list[dict]:
    with _lock:
        return sorted(_reports.values(), key=lambda r: r["name"])


def clear() -> None:
    """Forget every report (tests)."""
    with _lock:
        _reports.clear()
