"""Stopping a run at once, whatever it is doing: a `threading.Event` the engine checks cheaply and often.

Whoever runs the engine (the Celery task's watchdog thread, which polls the job's control queue, or a test) sets
the event; the engine notices it by time, not by a count of batches: at every batch, between chunks of the
frozen-feature pass, between setup steps, at every downloaded chunk, and inside a long forward or backward pass
(`Stop.guard`: a forward pre-hook on every module, and in training a gradient hook on every module's input, so a
224 px batch of 512 images is interrupted within one layer, not after the whole batch).

Raising inside autograd's backward is safe: the engine re-raises a hook's exception in the thread that called
`backward()`, with its type, and frees the graph; the gradients left half-accumulated belong to a step that
never happens (the optimizer has not stepped, and the run ends). The checkpoint of the last finished epoch is
written only between epochs, never at a check point, so it stays as it was.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch
from torch import nn


class StopRequested(Exception):
    """Raised at the first check after a stop was asked for; `run()` turns it into a "stopped" summary."""


class Stop:
    """The stop flag of one run. `check()` costs one attribute read while the flag is down."""

    def __init__(self, event: threading.Event | None = None):
        self.event = event or threading.Event()

    def set(self) -> None:
        self.event.set()

    def is_set(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        if self.event.is_set():
            raise StopRequested

    @contextmanager
    def guard(self, model: nn.Module):
        """Checks inside every module's forward (and, where gradients flow, its backward) while in the block."""
        def pre(_module, args):
            self.check()
            if torch.is_grad_enabled():
                for a in args:
                    if isinstance(a, torch.Tensor) and a.requires_grad:
                        a.register_hook(self._grad_check)

        handles = [m.register_forward_pre_hook(pre) for m in model.modules()]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _grad_check(self, _grad):
        self.check()  # returns None: the gradient passes unchanged
