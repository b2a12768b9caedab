"""Counting what the engine reads back from the device while it trains (issue 15: no per-batch sync): every
`.item`, `.cpu`, `.tolist`, `.numpy`, float(), int() and bool() of a tensor called from the engine's own files (and,
optionally, from one more file, e.g. PyTorch's GradScaler) during `_train_epoch`. Host bookkeeping on host tensors
(a store's `lacking`) is not a readback and is not counted."""
from __future__ import annotations

import os
import sys

from worker.engine import train as engine

READBACKS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


class Readbacks:
    """`calls`: the engine's readbacks while an epoch trains; `extra`: those from `also` (a file path)."""

    def __init__(self, monkeypatch, also: str | None = None):
        self.monkeypatch, self.on, self.calls, self.extra = monkeypatch, False, [], []
        engine_dir = os.path.dirname(engine.__file__)

        def counted(name, orig):
            def wrapper(t, *a, **k):
                caller = sys._getframe(1).f_code.co_filename
                if self.on and caller.startswith(engine_dir):
                    self.calls.append(name)
                if self.on and also is not None and caller == also:
                    self.extra.append(name)
                return orig(t, *a, **k)
            return wrapper
        for name in READBACKS:
            monkeypatch.setattr(engine.torch.Tensor, name, counted(name, getattr(engine.torch.Tensor, name)))
        orig_epoch = engine._train_epoch

        def observed(*a, **k):
            self.on = True
            try:
                return orig_epoch(*a, **k)
            finally:
                self.on = False
        monkeypatch.setattr(engine, "_train_epoch", observed)

    def host_only(self, cls, method: str) -> None:
        """`cls.method(idx, state)` must get host tensors; what it does on them is not counted."""
        orig = getattr(cls, method)

        def wrapped(obj, idx, state):
            assert idx.device.type == "cpu" and state.device.type == "cpu"
            on, self.on = self.on, False
            try:
                return orig(obj, idx, state)
            finally:
                self.on = on
        self.monkeypatch.setattr(cls, method, wrapped)
