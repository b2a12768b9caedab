"""core.stats: the t table against published values, the summary of a hand-worked example, the paper's number
inside or outside the interval, one run without an interval, repeat groups and mean curves."""
import math

import pytest

from core import stats
from core.config import preset


@pytest.mark.parametrize("df,t", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (19, 2.093), (29, 2.045),
                                  (30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980)])
def test_t_critical_matches_the_table(df, t):
    assert stats.t_critical(df) == pytest.approx(t, abs=6e-4)


def test_between_table_rows_the_interval_is_never_narrower():
    assert stats.t_critical(35) == stats.t_critical(30) > stats.t_critical(40)
    assert stats.t_critical(1000) == pytest.approx(1.980, abs=1e-3)
    with pytest.raises(ValueError):
        stats.t_critical(0)


def test_summary_of_a_hand_example():
    # 0.95, 0.96, 0.97: mean 0.96, sd 0.01, half-width t(2) * 0.01 / sqrt(3) = 4.3027 * 0.0057735 = 0.024842
    s = stats.summary([0.95, 0.96, 0.97], reference=0.955)
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.96) and s["std"] == pytest.approx(0.01)
    assert s["ci_low"] == pytest.approx(0.96 - 0.024842, abs=1e-6)
    assert s["ci_high"] == pytest.approx(0.96 + 0.024842, abs=1e-6)
    assert s["inside"] is True and stats.verdict(s, 0.955) == "inside"


def test_a_reference_outside_the_interval():
    s = stats.summary([0.950, 0.951, 0.952, 0.951], reference=0.955)
    assert s["ci_high"] < 0.955 and s["inside"] is False and stats.verdict(s, 0.955) == "outside"


def test_one_run_has_no_interval_and_no_paper_number_is_said():
    s = stats.summary([0.9], reference=0.95)
    assert s["n"] == 1 and s["mean"] == 0.9 and s["std"] is None and s["ci_low"] is None and s["inside"] is None
    assert stats.verdict(s, 0.95) == stats.ONE_RUN
    two = stats.summary([0.9, 0.92])
    assert two["inside"] is None and stats.verdict(two, None) == "no paper number"
    assert stats.summary([])["mean"] is None


def test_repeat_groups_join_runs_that_differ_only_by_seed():
    base = {"model": "deit_tiny_patch16_224", "epochs": 2, "lr": 1e-4}
    runs = [{"id": 1, "config": {**base, "seed": 0}, "value": 0.5, "reference": 0.6},
            {"id": 2, "config": {**base, "lr": 1e-3}, "value": 0.4, "reference": 0.6},
            {"id": 3, "config": {**base, "seed": 7}, "value": 0.7, "reference": 0.6},
            {"id": 4, "config": {**base, "seed": 8}, "value": None, "reference": 0.6},
            {"id": 5, "config": {**base, "epochs": 20}, "value": 0.9, "reference": 0.6},
            {"id": 6, "config": {**base, "seed": 9}, "value": 0.6, "reference": 0.6, "dry_run": True}]
    groups = stats.repeat_groups(runs)
    assert [g["ids"] for g in groups] == [[1, 3, 4], [2], [5], [6]]
    g = groups[0]
    assert g["n"] == 2 and g["mean"] == pytest.approx(0.6) and g["std"] == pytest.approx(math.sqrt(0.02))
    assert g["verdict"] == "inside" and groups[1]["verdict"] == stats.ONE_RUN


def test_mean_curve_per_epoch_over_the_runs_that_reached_it():
    c = stats.mean_curve([[(1, 0.5), (2, 0.7)], [(1, 0.7), (2, None), (3, 0.9)]])
    assert [p["epoch"] for p in c] == [1, 2, 3] and [p["n"] for p in c] == [2, 1, 1]
    assert c[0]["mean"] == pytest.approx(0.6) and c[0]["min"] == 0.5 and c[0]["max"] == 0.7
    assert c[0]["std"] == pytest.approx(math.sqrt(0.02)) and c[1]["std"] is None


def test_a_seed_run_twice_counts_once():
    """The same seed again is the same draw: counting it twice would give an interval of width zero."""
    cfg = preset("paper").to_dict()
    groups = stats.repeat_groups([{"id": 1, "config": cfg, "value": 0.9}, {"id": 2, "config": cfg, "value": 0.9},
                                  {"id": 3, "config": {**cfg, "seed": 1}, "value": 0.8}])
    (g,) = groups
    assert (g["n"], g["counted"], g["duplicates"]) == (2, [1, 3], [2]) and g["std"] > 0


def test_the_interval_on_accuracies_stays_within_what_an_accuracy_can_be():
    """Three seeds at 99%, 100% and 100%: mean +- t * sd / sqrt(n) reaches past 100% (and a low spread below 0):
    the interval is clipped to [0, 1], the mean and sd are not."""
    s = stats.summary([0.99, 1.0, 1.0])
    assert s["ci_high"] == 1.0 and 0.96 < s["ci_low"] < 0.99 and s["mean"] == pytest.approx(0.99667, abs=1e-5)
    low = stats.summary([0.0, 0.02, 0.0])
    assert low["ci_low"] == 0.0 and low["ci_high"] > 0.02
    assert stats.summary([0.99, 1.0, 1.0], reference=1.0)["inside"] is True
