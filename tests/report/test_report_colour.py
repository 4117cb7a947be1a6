"""The entropy colour scale, against values worked out by hand from its stops."""

from __future__ import annotations

import math

import pytest

from tepo_agent.report.colour import STOPS, entropy_colour, hex_colour, scale_max


@pytest.mark.parametrize(
    ("h", "top", "rgb"),
    [
        (0.0, 2.0, (255, 255, 255)),  # sure: white
        (0.66, 1.0, (253, 141, 60)),  # exactly the third stop
        (1.0, 1.0, (215, 48, 31)),  # the top
        (7.0, 1.0, (215, 48, 31)),  # above the top: clamped
        (-1.0, 1.0, (255, 255, 255)),  # below 0: clamped
        (math.nan, 1.0, (255, 255, 255)),
        # halfway between stops 3 and 4: t = 0.83, f = 0.5 ->
        # (253 + (215-253)/2, 141 + (48-141)/2, 60 + (31-60)/2) = (234, 94.5, 45.5) -> (234, 95, 46)
        (0.83, 1.0, (234, 95, 46)),
        # a quarter of the way to stop 2 on a scale of 4 nats: t = 0.0825, f = 0.25 ->
        # (255, 255 - 18/4, 255 - 95/4) = (255, 250.5, 231.25) -> (255, 251, 231)
        (0.33, 4.0, (255, 251, 231)),
    ],
)
def test_entropy_colour_interpolates_between_the_stops(h: float, top: float, rgb: tuple) -> None:
    assert entropy_colour(h, top) == rgb


def test_the_scale_runs_from_white_to_red() -> None:
    assert STOPS[0][0] == 0.0 and STOPS[-1][0] == 1.0
    assert hex_colour(entropy_colour(0.0, 1.0)) == "#ffffff"
    assert hex_colour(entropy_colour(1.0, 1.0)) == "#d7301f"


def test_scale_max_is_the_99th_percentile_rounded_up_to_half_a_nat() -> None:
    assert scale_max([]) == 0.5
    assert scale_max([0.01, 0.2]) == 0.5  # the floor
    # 101 values 0.0, 0.03, ..., 3.0: the 99th percentile is the 100th value, 2.97 -> 3.0
    assert scale_max([i * 0.03 for i in range(101)]) == 3.0
    # one outlier among 200 sure tokens does not set the scale
    assert scale_max([0.9] * 200 + [40.0]) == 1.0
    assert scale_max([1.2, math.inf, math.nan]) == 1.5
