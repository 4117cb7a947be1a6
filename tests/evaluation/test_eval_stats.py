"""Intervals of an evaluation against values worked out by hand (and from statistical tables)."""

from __future__ import annotations

import math

import pytest

from tepo_agent.errors import ConfigError
from tepo_agent.evaluation.stats import (
    mean_interval,
    mean_sd,
    paired_interval,
    relative_change,
    score_interval,
    t_quantile,
    wilson_interval,
)


@pytest.mark.parametrize(
    ("df", "table"),
    [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (29, 2.0452), (100, 1.9840)],
)
def test_t_quantile_matches_the_printed_table(df: int, table: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-3)
    assert t_quantile(0.025, df) == pytest.approx(-table, abs=1e-3)


def test_wilson_interval_of_8_out_of_10() -> None:
    # z = 1.95996; centre = (0.8 + z²/20) / (1 + z²/10); half = z·sqrt(0.016 + z²/400) / (1 + z²/10)
    ci = wilson_interval(8, 10)
    assert ci.estimate == 0.8
    assert (ci.low, ci.high) == pytest.approx((0.4902, 0.9433), abs=1e-4)


def test_wilson_interval_stays_inside_0_1_at_the_edges() -> None:
    none = wilson_interval(0, 20)
    assert none.low == 0.0 and 0.0 < none.high < 0.2
    every = wilson_interval(20, 20)
    assert every.high == 1.0 and 0.8 < every.low < 1.0


def test_mean_interval_by_hand() -> None:
    # mean 2.5, sd = sqrt(5/3) = 1.29099, t_{0.975,3} = 3.1824 -> half 3.1824 * 1.29099 / 2
    ci = mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.1824 * math.sqrt(5 / 3) / 2
    assert ci.estimate == 2.5
    assert (ci.low, ci.high) == pytest.approx((2.5 - half, 2.5 + half), abs=0.01)


def test_score_interval_uses_wilson_for_binary_and_t_otherwise() -> None:
    assert score_interval([1.0, 0.0, 1.0, 1.0]) == wilson_interval(3, 4)
    wide, t = score_interval([0.5, 1.0, 0.0]), mean_interval([0.5, 1.0, 0.0])
    assert (wide.estimate, wide.low, wide.high) == (t.estimate, 0.0, 1.0)  # t cut to [0, 1]
    # per-item means near 0: the t interval would reach below 0, accuracy's stops there
    near_zero = [0.25] + [0.0] * 23
    assert mean_interval(near_zero).low < 0 and score_interval(near_zero).low == 0.0


def test_paired_interval_of_identical_scores_is_exactly_zero() -> None:
    ci = paired_interval([1, 0, 1, 0], [1, 0, 1, 0])
    assert (ci.estimate, ci.low, ci.high) == (0.0, 0.0, 0.0)
    assert not ci.excludes_zero()


def test_paired_interval_detects_a_change_that_unpaired_intervals_miss() -> None:
    # 10 items, 6 of them flip 0 -> 1, none the other way: differences d = 1 (6x), 0 (4x)
    before = [0.0] * 6 + [1.0, 1.0, 0.0, 0.0]
    after = [1.0] * 6 + [1.0, 1.0, 0.0, 0.0]
    ci = paired_interval(before, after)
    # mean 0.6, sd = sqrt(0.24 * 10 / 9) = 0.5164, t_{9} = 2.2622 -> half 0.3694
    assert ci.estimate == pytest.approx(0.6)
    assert (ci.low, ci.high) == pytest.approx((0.2306, 0.9694), abs=1e-3)
    assert ci.excludes_zero()
    assert wilson_interval(2, 10).high > wilson_interval(8, 10).low  # unpaired: they overlap


def test_paired_interval_refuses_different_lengths() -> None:
    with pytest.raises(ConfigError, match="same items"):
        paired_interval([1.0], [1.0, 0.0])


def test_relative_change_and_mean_sd() -> None:
    assert relative_change(0.28, 1.0) == pytest.approx(-0.72)
    assert relative_change(1.0, 0.0) is None
    assert mean_sd([2.0, 4.0, 6.0]) == (4.0, 2.0)
    assert mean_sd([3.0]) == (3.0, 0.0)
