"""The test tiers, declared once: what each marker says a test needs, which of them keep a test out of the fast
tier (`make test`, `pytest --tier fast`), which may run in parallel, and two guards that keep the markers honest.

Markers come from three places: by folder (every test under tests/frontend drives a browser against a lab), by
fixture (a test that asks for `make_lab` starts real processes), and written on the test for the rest (a CLI
run, a mount). So a colleague's new test lands in the right tier without editing anything here.

The guards run in every tier:
- a test that starts a program (`subprocess.Popen`, which asyncio and Playwright use too) must carry the marker
  for what it started: any program needs `subprocess`, redis-server `redis`, uvicorn or a Celery worker `system`,
  docker-compose `compose`, mount `mount`;
- a fast-tier test (none of the markers in SLOW_TIER) whose call takes longer than `fast_test_limit_s`
  fails with the advice to mark it `slow` or make it faster. On a loaded machine the time counted is the
  larger of the call's CPU time (with its children's) and its wall time divided by the load (unloaded_s), so a
  fast test is not failed because other work shares the cores.
"""
from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest

# What a test needs, as `pytest --markers` shows it. Registered here, so `--strict-markers` refuses any other.
MARKERS = {
    "system": "a lab of real processes: uvicorn and/or a Celery worker (tests/lab.py)",
    "browser": "headless Chromium through Playwright",
    "redis": "a real redis-server on loopback",
    "subprocess": "starts another program (a CLI run, a Python child, a kernel)",
    "compose": "the docker-compose (or `docker compose`) command",
    "mount": "mounts a file system (root; falls back where it may not)",
    "train": "trains with the engine on the tiny CIFAR-format set (the tiny_cifar_dir fixture)",
    "slow": "takes more than a few seconds (real training, many builds): the full tier only",
}
# A test with any of these is left out of `make test`: it needs something `make install` does not provide
# (a service, a browser, docker-compose, root) or takes too long to run before every commit.
SLOW_TIER = ("system", "browser", "redis", "compose", "mount", "train", "slow")
# `make test-all` runs the tests without these on every core (pytest-xdist), then these one at a time: labs of real
# processes wait on heartbeats and timeouts that a second lab on the same two cores would stretch.
SERIAL = ("system", "browser", "redis")
TIERS = {"fast": "no marker of SLOW_TIER (make test)", "parallel": "no marker of SERIAL",
         "serial": "a marker of SERIAL", "all": "every test"}
# What a marker implies: a lab, a browser, a redis-server and docker-compose are all programs of their own.
IMPLIES = {"system": ("subprocess",), "browser": ("subprocess",), "redis": ("subprocess",),
           "compose": ("subprocess",), "mount": ("subprocess",)}
# Markers by folder under tests/ and by fixture name: colleagues' new tests get them without editing.
BY_FOLDER = {"frontend": ("browser", "system"), "system": ("system",), "notebook": ("subprocess", "slow")}
BY_FIXTURE = {"make_lab": ("system",), "lab": ("system",), "ui_lab": ("system",), "idle_lab": ("system",),
              "browser": ("browser",),
              "page": ("browser",), "redis_server": ("redis",), "tiny_cifar_dir": ("train",)}
TESTS = Path(__file__).resolve().parent


def pytest_addoption(parser):
    parser.addoption("--tier", choices=tuple(TIERS), default="all",
                     help="; ".join(f"{k}: {v}" for k, v in TIERS.items()) + f" (SLOW_TIER: {', '.join(SLOW_TIER)}; "
                          f"SERIAL: {', '.join(SERIAL)})")
    parser.addini("fast_test_limit_s", "seconds a fast-tier test's call may take (scaled by the load)",
                  default="5")


def pytest_configure(config):
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    _watch_spawns()


def markers_for(item) -> set[str]:
    """The markers a collected test gets from its folder and its fixtures, with what they imply."""
    names = set()
    try:
        folder = Path(str(item.path)).resolve().relative_to(TESTS).parts[:-1]
    except ValueError:  # a test outside tests/
        folder = ()
    if folder:
        names.update(BY_FOLDER.get(folder[0], ()))
    for fixture in getattr(item, "fixturenames", ()):
        names.update(BY_FIXTURE.get(fixture, ()))
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("lab") == "redis":  # tests/system's lab, once per broker
        names.add("redis")
    names.update(m.name for m in item.iter_markers())
    for name in list(names):
        names.update(IMPLIES.get(name, ()))
    return names & set(MARKERS)


def in_fast_tier(names: set[str]) -> bool:
    return not names & set(SLOW_TIER)


def in_tier(tier: str, names: set[str]) -> bool:
    return {"fast": in_fast_tier(names), "parallel": not names & set(SERIAL), "serial": bool(names & set(SERIAL)),
            "all": True}[tier]


def pytest_collection_modifyitems(config, items):
    for item in items:
        have = {m.name for m in item.iter_markers()}
        for name in sorted(markers_for(item) - have):
            item.add_marker(name)
    tier = config.getoption("--tier")
    if tier != "all":
        keep = [i for i in items if in_tier(tier, {m.name for m in i.iter_markers()})]
        config.hook.pytest_deselected(items=[i for i in items if i not in keep])
        items[:] = keep


# --- the guards ---------------------------------------------------------------------------------------------

_spawned: list[list[str]] | None = None  # the programs the running test started; None outside a test


def _watch_spawns():
    """Record every program started through subprocess.Popen while a test runs (once per process)."""
    if getattr(subprocess.Popen.__init__, "_recorded", False):
        return
    original = subprocess.Popen.__init__

    def init(self, args, *a, **kw):
        if _spawned is not None:
            _spawned.append([str(args)] if isinstance(args, (str, bytes, os.PathLike)) else [str(x) for x in args])
        original(self, args, *a, **kw)

    init._recorded = True
    subprocess.Popen.__init__ = init


# Programs the standard library runs on a library's behalf, not the test's: ctypes.util.find_library asks
# `ldconfig -p` where a library (torch's, on its first import) is looked up; platform.processor() asks `uname -p`.
LIBRARY_LOOKUPS = frozenset({"ldconfig", "uname"})


def needs_of(argv: list[str]) -> set[str]:
    """The markers a started program asks of the test that started it."""
    prog, text = Path(argv[0].split()[0]).name if argv else "", " ".join(argv)
    if prog in LIBRARY_LOOKUPS:
        return set()
    needs = {"subprocess"}
    if prog.startswith("redis-server"):
        needs.add("redis")
    elif prog in ("docker", "docker-compose"):
        needs.add("compose")
    elif prog in ("mount", "umount"):
        needs.add("mount")
    elif "backend.serve" in text or "backend.launch" in text or " celery " in f" {text} " or "uvicorn" in text:
        needs.add("system")
    return needs


def share_cores() -> None:
    """Under pytest-xdist, each worker process computes on its share of the cores. With torch's default (every core)
    in each, two workers on two cores run four compute threads, and OpenMP's spinning waits turned a 0.6 s torch
    test into 9 s of wall and of CPU time (the fast-tier guard then failed it). Call it before anything imports
    torch, which reads OMP_NUM_THREADS once; a value already set is kept."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        share = (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))


def _cpu_s() -> float:
    """CPU seconds of this process and of the children it has waited for (a CLI run, a Python child)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def unloaded_s(wall: float, cpu: float, load: float) -> float:
    """About how long a call would take on an idle machine: its wall time, less what other work took. On a loaded
    machine that is the larger of its CPU time (counting its children) and its wall time divided by the load."""
    return min(wall, max(cpu, wall / load))


def _load_factor() -> float:
    """How many times over the cores are booked (at least 1): a test's time is divided by it."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    global _spawned
    _spawned = item._spawned = []
    try:
        yield
    finally:
        _spawned = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    before = _cpu_s()
    yield
    item._call_cpu_s = _cpu_s() - before


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item._call_s = call.duration
        item._load = _load_factor()
    if rep.when != "teardown" or not rep.passed:
        return
    have = {m.name for m in item.iter_markers()}
    problems = []
    missing = set().union(*(needs_of(a) for a in getattr(item, "_spawned", []))) - have
    if missing:
        started = "; ".join(" ".join(a)[:120] for a in item._spawned[:3])
        problems.append(f"it started {started} but is not marked {', '.join(sorted(missing))}: add "
                        + " ".join(f"@pytest.mark.{m}" for m in sorted(missing)))
    limit = float(item.config.getini("fast_test_limit_s"))
    call_s, cpu_s, load = getattr(item, "_call_s", 0.0), getattr(item, "_call_cpu_s", 0.0), getattr(item, "_load", 1.0)
    if in_fast_tier(have) and unloaded_s(call_s, cpu_s, load) > limit:
        problems.append(f"a fast-tier test took {call_s:.1f} s, {cpu_s:.1f} s of CPU (load factor {load:.1f}; limit "
                        f"{limit:g} s): make it faster, or mark it @pytest.mark.slow")
    if problems:
        rep.outcome = "failed"
        rep.longrepr = "tier guard (tests/tiers.py): " + "\n".join(problems)
