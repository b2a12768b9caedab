"""How a model and a run look in every chart: declared once here, so the compare view (GET /api/models carries each
model's colour, GET /api/compare/stats each run's look) and the reproduction report draw a model and a run alike.

A model's colour follows the catalogue's order (a model keeps it whatever else is shown beside it). Runs of one
model are shades of that colour, each with its own marker symbol: a clone with one changed option never draws as an
identical line with an identical swatch, yet reads as the same model. The paper's curve is the model's own colour,
dashed and without markers (its best, where it has no curve, dotted): no run is drawn so. Torch-free.
"""
from __future__ import annotations

import zlib
from collections.abc import Iterable

from . import catalogue

# The ten paper models get Tableau's ten; the others are set apart.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
           "#393b79", "#111111", "#b15928", "#fb9a99", "#a6cee3", "#6a3d9a", "#b2df8a", "#fdbf6f", "#01665e",
           "#c51b7d", "#7f7f00")
# A run's marker, by its place among all the runs of its model in the lab, by job id (the paper's Table 1 points are circles: no run's is):
# Plotly's name, and the character a table's swatch and the Markdown report show for it.
SYMBOLS = (("diamond", "◆"), ("square", "■"), ("triangle-up", "▲"), ("x", "✕"), ("star", "★"),
           ("triangle-down", "▼"), ("cross", "✚"), ("pentagon", "⬟"), ("hexagon", "⬢"), ("hourglass", "⧗"))
# A run's shade, by the same place: the model's colour, then mixed toward black (negative) or white (positive).
SHADES = (0.0, -0.35, 0.3, -0.6, 0.5)
# A model colour near black (or near white) has no room toward black (white): its shades there all look the same
# (#111111 gave #0b0b0b and #070707) or fade into the page. Such a colour's runs are shaded only the other way,
# by these magnitudes (distinct from one another, as SHADES' are).
ONE_WAY = (0.0, 0.3, 0.5, 0.65, 0.15)
DARK, LIGHT = 0.2, 0.7  # a colour's luma (0..1) below DARK is shaded only lighter, above LIGHT only darker
PAPER_DASH, PAPER_BEST_DASH = "dash", "dot"  # the paper's per-epoch curve; its best as a flat line
TRAIN_DASH = "dashdot"  # a run's training curve, beside its validation curve in the run's look
KERAS_DASH = "dot"  # with head_l2 on, a run's loss as Keras prints it (the paper's loss is that one)
LINES = {"paper": PAPER_DASH, "paper_best": PAPER_BEST_DASH, "train": TRAIN_DASH,
         "keras": KERAS_DASH}  # what the compare view is sent


def model_colour(model: str) -> str:
    """A catalogue model's colour by its place in the catalogue; any other timm name one of the colours past the
    catalogue's, by a stable hash of its name (the same in every view and every visit)."""
    order = list(catalogue.CATALOGUE)
    if model in order:
        return PALETTE[order.index(model) % len(PALETTE)]
    rest = PALETTE[len(order):] or PALETTE
    return rest[zlib.crc32(model.encode()) % len(rest)]


def shade(colour: str, amount: float) -> str:
    """`colour` (#rrggbb) mixed toward white (amount > 0) or black (amount < 0) by |amount|."""
    rgb = [int(colour[i:i + 2], 16) for i in (1, 3, 5)]
    target = 255 if amount > 0 else 0
    return "#" + "".join(f"{round(c + (target - c) * abs(amount)):02x}" for c in rgb)


def luma(colour: str) -> float:
    """The perceived lightness of `colour` (#rrggbb), 0 (black) to 1 (white): Rec. 601 weights."""
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.299 * r + 0.587 * g + 0.114 * b


def run_shade(base: str, k: int) -> str:
    """The k-th run's shade of the model colour `base`: SHADES' k-th, or ONE_WAY's away from black or white for
    a colour too close to it to be shaded both ways."""
    light = luma(base)
    if light < DARK:
        return shade(base, ONE_WAY[k % len(ONE_WAY)])
    if light > LIGHT:
        return shade(base, -ONE_WAY[k % len(ONE_WAY)])
    return shade(base, SHADES[k % len(SHADES)])


def run_look(model: str, k: int) -> dict:
    """The look of the k-th run (from 0) of `model`: its shade and marker, {colour, symbol, glyph, model_colour}."""
    base = model_colour(model)
    symbol, glyph = SYMBOLS[k % len(SYMBOLS)]
    return {"colour": run_shade(base, k), "symbol": symbol, "glyph": glyph, "model_colour": base}


def run_looks(runs: Iterable[tuple[int, str]]) -> dict[int, dict]:
    """Each run's look, {job id: look} for runs given as (job id, model): the k-th run of a model in job order gets
    the k-th shade and symbol. Pass every run the lab holds (the backend's job_view.looks does): a look counted
    among only the runs a view shows would change with what else is shown, so one run would draw one way in a
    comparison and another in a report of other runs."""
    seen: dict[str, int] = {}
    out = {}
    for job_id, model in sorted(set(runs)):
        k = seen.get(model, 0)
        seen[model] = k + 1
        out[job_id] = run_look(model, k)
    return out
