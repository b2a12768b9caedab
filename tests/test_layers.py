"""The rooms and the one-way arrows between them (README, "How it is built"):

    core/           torch-free: catalogue and paper numbers, options, protocol, settings   (imports no room)
    worker/engine/  torch + timm: the training run                                         (imports core)
    worker/queue/   Celery: app, task, worker entry point                                  (imports core, engine)
    backend/        FastAPI + SQLAlchemy                                                   (imports core only)

Read from the source (every import statement, including those inside functions) and checked at run time (what
importing the backend really loads).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

WEB_OR_QUEUE = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "celery", "kombu", "redis"}
TORCH = {"torch", "torchvision", "timm", "numpy", "safetensors"}

# room -> (its files, top-level modules it must never import)
RULES = {
    "core": ("core", {"backend", "worker", *TORCH, "fastapi", "sqlalchemy", "celery"}),
    "engine": ("worker/engine", {"backend", "worker.queue", *WEB_OR_QUEUE}),
    "queue": ("worker/queue", {"backend"}),
    "cli": ("worker", {"backend"}),
    "backend": ("backend", {"worker", *TORCH}),
}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _forbidden(name: str, banned: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("room", list(RULES))
def test_no_import_runs_back_up(room):
    folder, banned = RULES[room]
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(_imports(path)) if _forbidden(m, banned)]
    assert not bad, "\n".join(bad)


def test_the_rule_reader_sees_a_violation(tmp_path):
    """The check above can fail: a planted `from backend...` inside a function is found."""
    bad = ROOT / "core" / "_planted_for_test.py"
    bad.write_text("def f():\n    from backend.app import db\n    import torch\n")
    try:
        found = _imports(bad)
        assert _forbidden("backend.app", RULES["core"][1]) and "backend.app" in found and "torch" in found
    finally:
        bad.unlink()


@pytest.mark.subprocess
def test_backend_at_run_time_loads_no_torch_and_no_worker_code():
    code = ("import backend.app.main, sys; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'worker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


@pytest.mark.subprocess
def test_core_at_run_time_is_torch_free():
    code = ("import core.catalogue, core.config, core.options, core.protocol, core.broker, core.settings, sys; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'numpy', 'backend', "
            "'worker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
