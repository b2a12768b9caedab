"""Runs of one model must be told apart by colour too, whatever the model's colour (core/palette.py)."""
from __future__ import annotations

import itertools
import math

import pytest

from core import catalogue, palette

WHITE = "#ffffff"
APART = 0.05  # the least distance (RGB, 0..1) between two runs' shades of one model
ON_PAGE = 0.12  # the least distance of a run's colour from the white page


def _distance(a: str, b: str) -> float:
    ra, rb = ([int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in (a, b))
    return math.dist(ra, rb) / math.dist((0, 0, 0), (255, 255, 255))


@pytest.mark.parametrize("model", list(catalogue.CATALOGUE) + ["some_timm_model", "another_timm_model"])
def test_five_runs_of_one_model_have_five_visible_shades(model):
    looks = palette.run_looks((i, model) for i in range(1, 6))
    colours = [v["colour"] for v in looks.values()]
    for a, b in itertools.combinations(colours, 2):
        assert _distance(a, b) >= APART, (model, palette.model_colour(model), a, b)
    for c in colours:
        assert _distance(c, WHITE) >= ON_PAGE, (model, c)


@pytest.mark.parametrize("colour", palette.PALETTE)
def test_every_palette_colour_shades_apart(colour):
    shades = [palette.run_shade(colour, k) for k in range(5)]
    assert min(_distance(a, b) for a, b in itertools.combinations(shades, 2)) >= APART, (colour, shades)
    assert min(_distance(c, WHITE) for c in shades) >= ON_PAGE, (colour, shades)
