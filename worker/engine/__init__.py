"""The engine's front door: what the Celery task, the command line, the notebook and the tools use.

Callers import these names from `worker.engine`, never from the module that happens to define them today
(tests/test_layers.py holds them to it), so a module can move (the builders left train.py) without touching its
callers. Loaded on first use (PEP 562): importing `worker.engine` (or asking it for an error type, which lives in
core) does not import torch, which costs seconds, until a name that needs it is asked for.
"""
from __future__ import annotations

import importlib

_WHERE = {
    # assembling and running a run
    "assemble": "assembly", "Assembly": "assembly", "Prior": "assembly", "lab_paths": "assembly",
    "existing_run": "assembly", "USER_ERRORS": "assembly", "user_error_text": "assembly",
    "run": "train", "Callbacks": "train", "Paths": "train", "Diverged": "train", "release_memory": "train",
    "StopRequested": "stop", "Stop": "stop",
    # errors a user can fix, and how a front end phrases their fixes
    "SetupError": "core.errors", "Fix": "core.errors", "Terms": "core.errors",
    "WeightsError": "weights", "HubUnavailable": "weights", "DatasetError": "core.datasets", "StorageError": "checkpoint",
    "DeviceError": "device", "TeacherError": "distill",
    # builders and the device
    "build_model": "builders", "make_optimizer": "builders", "grad_scaler": "builders",
    "DevicePolicy": "device", "resolve_device": "device", "fp32_math": "device", "machine_limits": "limits",
    "MLPHead": "heads", "plan_for": "model", "Preprocess": "preprocess", "bf16_supported": "device",
    "measured_chunks": "features",
    # weights
    "create_backbone": "weights", "local_file": "weights", "hub_offline": "weights", "cached_hub_file": "weights",
}
# Modules offered whole: the datasets (load, subsets, the generated stand-in) and the frozen-feature store.
_MODULES = ("data", "features")

__all__ = sorted({*_WHERE, *_MODULES})


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    where = _WHERE[name]  # an engine module, or a torch-free one of core's (a dotted name)
    value = getattr(importlib.import_module(where if "." in where else f"{__name__}.{where}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})
