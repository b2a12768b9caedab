"""A setup problem a user can fix, with its fixes as data, and how each front end says them.

The engine knows what is wrong and what would fix it (an option's value, a file to put in a folder); it does not
know whether its user types a flag (`--weights none`), a keyword argument (`run(..., weights="none")`) or picks a
form field (`weights: none`). So a `SetupError` carries its `Fix`es as data and each front end phrases them with
its own `Terms` (worker/finetune.py, worker/notebook.py, worker/queue/tasks.py): no front end edits another's
wording. `str()` of the error is a neutral phrasing, for logs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Fix:
    """One way out: set `option` to `value`, and/or put `file` in the folder `folder` (a setting's name:
    weights_dir, data_dir, out) that is `path` now; `note` says the rest in plain words ("on a connected machine")."""
    option: str | None = None
    value: Any = None
    file: str | None = None
    folder: str | None = None
    path: Path | None = None
    note: str | None = None


class Terms:
    """How a front end names an option's value and a folder setting; `after`: what to do once it is fixed."""
    after: str = ""

    def option(self, name: str, value: Any) -> str:
        return f"set {name} to {value}"

    def folder(self, name: str | None, path: Path | None) -> str:
        return f"{path}" + (f" (the {name} folder)" if name else "")

    def fix(self, f: Fix) -> str:
        parts = []
        if f.option:
            parts.append(self.option(f.option, f.value))
        if f.file:
            parts.append(f"put {f.file} in {self.folder(f.folder, f.path)}")
        elif f.folder:
            parts.append(f"use {self.folder(f.folder, f.path)}")
        text = " and ".join(parts)
        if f.note:
            text = f"{text} {f.note}" if text else f.note
        return text

    def phrase(self, e: SetupError) -> str:
        text = e.problem.rstrip(". ")
        fixes = [self.fix(f) for f in e.fixes]
        if fixes:
            text += ". Fix: " + "; or ".join(fixes)
            if self.after:
                text += f", {self.after}"
        return text + "."


NEUTRAL = Terms()


class SetupError(RuntimeError):
    """What stops a run before it trains (the weights, the data, the run's folder) and how to fix it: `problem`
    says what is wrong and where it looked, `fixes` the ways out, as data."""

    def __init__(self, problem: str, fixes: Sequence[Fix] = ()):
        self.problem, self.fixes = problem, tuple(fixes)
        super().__init__(NEUTRAL.phrase(self))

    def phrase(self, terms: Terms) -> str:
        return terms.phrase(self)
