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
# The datasets' loader reads CIFAR's pickles and image folders with numpy and PIL, torch-free, so the engine and the
# backend's thumbnails read through one loader; no module the backend or core loads at start imports it (below).
NUMPY_READERS = {"core/datasets.py"}


def _imports(path: Path) -> set[str]:
    """Absolute module names a file imports (relative imports resolved against its package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    for mod, name in _import_froms(path):
        out.update((mod, f"{mod}.{name}"))
    return out


def _forbidden(name: str, banned: set[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


@pytest.mark.parametrize("room", list(RULES))
def test_no_import_runs_back_up(room):
    folder, banned = RULES[room]
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        allowed = {"numpy"} if str(path.relative_to(ROOT)) in NUMPY_READERS else set()
        bad += [f"{path.relative_to(ROOT)} imports {m}" for m in sorted(_imports(path))
                if _forbidden(m, banned - allowed)]
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
    code = ("import core.catalogue, core.config, core.options, core.protocol, core.broker, core.settings, "
            "core.folders, core.mistakes, sys; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'numpy', 'backend', "
            "'worker')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# -- the engine's front door, and private names kept private -----------------------------------------------------
SHIPPED = ("backend", "core", "worker", "tools")  # the product's code; tests may reach inside what they test
OURS = ("backend", "core", "worker", "tools", "tests")


def _import_froms(path: Path):
    """(module, name) for every `from module import name` of a file, relative imports resolved."""
    pkg = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            for a in node.names:
                yield mod, a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_imports(path: Path) -> list[str]:
    """Another module's `_private` name (or a `_private` module of ours) imported by `path`."""
    own = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    bad = []
    for mod, name in _import_froms(path):
        if mod.split(".")[0] not in OURS or mod == own:
            continue
        if any(_private(part) for part in mod.split(".")) or (name and _private(name)):
            bad.append(f"{path.relative_to(ROOT)} imports {mod}{'.' + name if name else ''}")
    return bad


def _engine_side_doors(path: Path) -> list[str]:
    """An import of the engine from outside it that goes past its front door: `worker.engine.<module>`, or a
    name `worker.engine` does not list in `__all__`."""
    import worker.engine
    bad = []
    for mod, name in _import_froms(path):
        if mod.startswith("worker.engine."):
            bad.append(f"{path.relative_to(ROOT)} imports {mod}{'.' + name if name else ''}")
        elif mod == "worker.engine" and name is not None and name not in worker.engine.__all__:
            bad.append(f"{path.relative_to(ROOT)} imports worker.engine.{name} (not in its __all__)")
    return bad


def _shipped_files():
    for top in SHIPPED:
        yield from sorted((ROOT / top).rglob("*.py"))


def test_no_module_imports_another_modules_private_name():
    bad = [b for path in _shipped_files() for b in _private_imports(path)]
    assert not bad, "\n".join(bad)


def test_callers_use_the_engines_front_door():
    bad = [b for path in _shipped_files() if not path.is_relative_to(ROOT / "worker" / "engine")
           for b in _engine_side_doors(path)]
    assert not bad, "\n".join(bad)


def test_every_front_door_name_is_there():
    import worker.engine
    assert all(getattr(worker.engine, name) is not None for name in worker.engine.__all__)


def test_the_front_door_and_privacy_rules_can_fail():
    """Both rules find a planted violation: a private name of another module, a side door into the engine."""
    bad = ROOT / "worker" / "_planted_for_test.py"
    bad.write_text("def f():\n    from worker.finetune import _BarLog\n    from .engine.train import run\n"
                   "    from worker.engine import _WHERE, Callbacks\n")
    try:
        private = _private_imports(bad)
        side = _engine_side_doors(bad)
        assert private == ["worker/_planted_for_test.py imports worker.finetune._BarLog",
                           "worker/_planted_for_test.py imports worker.engine._WHERE"], private
        assert side == ["worker/_planted_for_test.py imports worker.engine.train.run",
                        "worker/_planted_for_test.py imports worker.engine._WHERE (not in its __all__)"], side
    finally:
        bad.unlink()
