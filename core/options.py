"""Training options, declared once: each field of TrainConfig (core/config.py) is an `opt(...)` that says its
paper default, bounds or choices, a one-line help text, whether a browser may set it and whether it changes what a
run computes. Everything else derives from that declaration:

- the API's pydantic model (backend/app/schemas.py) and its 422s naming the field,
- the CLI's flags with help text and default (worker/finetune.py),
- the browser form, served as JSON by `GET /api/options` and rendered by the frontend,
- the comparison CSV's config columns,
- the checkpoint rule: a checkpoint resumes under a config that differs only in options that do not change what
  a run computes, and an option added later, at its default, matches a checkpoint written before it existed.

Torch-free: the backend reads it.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Option:
    """One training option, as its declaration states it (see `opt`)."""
    name: str
    type: type  # int | float | bool | str
    default: Any  # the paper's (models with another value in the paper's preset say so in the catalogue)
    help: str
    nullable: bool = False  # None is allowed (its meaning is in `none_means`)
    none_means: str | None = None
    choices: tuple | None = None  # for the CLI and the engine
    web_choices: tuple | None = None  # for a browser, where they differ (weights: no file paths)
    pattern: str | None = None  # text also allowed besides the choices, a full-match regex (dataset: folder:NAME)
    pattern_means: str | None = None  # what the pattern's values are, in words
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    web: bool = True  # a browser may set it
    affects_result: bool = True  # False: device, workers, epochs; a checkpoint resumes across them
    advanced: bool = True  # folded away in the form
    label: str | None = None

    @property
    def title(self) -> str:
        return self.label or self.name.replace("_", " ").capitalize()

    def check(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None."""
        if value is None:
            return None if self.nullable else "must not be empty"
        if self.type is bool:
            return None if isinstance(value, bool) else "must be true or false"
        if self.type in (int, float):
            if isinstance(value, bool) or not isinstance(value, int if self.type is int else (int, float)):
                return f"must be {'an integer' if self.type is int else 'a number'}"
            if not math.isfinite(value):
                return "must be a finite number"
            for bound, ok, word in ((self.ge, lambda b: value >= b, ">="), (self.gt, lambda b: value > b, ">"),
                                    (self.le, lambda b: value <= b, "<="), (self.lt, lambda b: value < b, "<")):
                if bound is not None and not ok(bound):
                    return f"must be {word} {bound:g}"
            return None
        if not isinstance(value, str):
            return "must be text"
        if self.choices and value not in self.choices and not (self.pattern and re.fullmatch(self.pattern, value)):
            also = f" or {self.pattern_means}" if self.pattern else ""
            return f"must be one of {', '.join(map(str, self.choices))}{also}"
        return None

    def public(self) -> dict:
        """What the browser form needs to render and check this field."""
        return {"name": self.name, "label": self.title, "help": self.help, "type": self.type.__name__,
                "default": self.default, "nullable": self.nullable, "none_means": self.none_means,
                "choices": list(self.web_choices or self.choices or []) or None, "advanced": self.advanced,
                "pattern": self.pattern, "pattern_means": self.pattern_means,
                "min": self.ge if self.ge is not None else self.gt, "max": self.le if self.le is not None else self.lt,
                "exclusive_min": self.gt is not None, "exclusive_max": self.lt is not None}


def opt(default: Any, help: str, **spec: Any) -> Any:
    """Declare a TrainConfig field: `lr: float = opt(1e-4, "Adam learning rate (paper: 1e-4)", gt=0, le=1)`."""
    return dataclasses.field(default=default, metadata={"option": {"help": help, **spec}})


def options_of(cls) -> tuple[Option, ...]:
    """The Options of a dataclass whose fields were declared with `opt`, in declaration order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = dict(f.metadata["option"])
        base, nullable, choices = _unpack(hints[f.name])
        choices = spec.pop("choices", choices)  # a str field with a pattern names its fixed choices so
        out.append(Option(name=f.name, type=base, default=f.default, nullable=nullable,
                          choices=choices, **spec))
    return tuple(out)


def _unpack(hint) -> tuple[type, bool, tuple | None]:
    """`int | None` -> (int, True, None); `Literal["a", "b"]` -> (str, False, ("a", "b"))."""
    args = typing.get_args(hint)
    nullable = False
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in args if a is not type(None)]
        nullable = len(rest) < len(args)
        (hint,) = rest
        args = typing.get_args(hint)
    if typing.get_origin(hint) is Literal:
        return type(args[0]), nullable, tuple(args)
    return hint, nullable, None
