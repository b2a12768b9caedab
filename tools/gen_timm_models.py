"""Writes core/timm_models.json: every model name in the installed timm's registry (`timm.list_models()`).

    .venv/bin/python -m tools.gen_timm_models

Why a file: the web lab, the plan and run() accept any timm model, not only the catalogue's, and the backend
validates a model name without importing torch or timm (tests/test_layers.py). A name list is data the backend
can read, generated from the real registry the way core/flops.json is (tools/gen_flops.py); the worker still checks
the name against its own timm when it assembles the run (worker/engine/assembly.py), so a worker with another timm
refuses a name it lacks with a clear error instead of a stack. tests/core/test_timm_models.py checks that the file
matches the installed timm.
"""
from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "core" / "timm_models.json"


def registry() -> dict:
    import timm
    return {"timm_version": timm.__version__, "models": sorted(timm.list_models())}


def main() -> None:
    OUT.write_text(json.dumps(registry(), indent=0) + "\n")
    print(f"wrote {OUT} ({len(registry()['models'])} models)")


if __name__ == "__main__":
    main()
