"""The entropy colour scale shared by the HTML report, the live dashboard and the terminal.

A token's entropy H (nats) is placed on ``[0, scale_max]`` and coloured by linear interpolation
between :data:`STOPS` (white = the model was sure, through yellow and orange, to red = it was
unsure). The browser pages get the same stops and ``scale_max`` in their data and interpolate with
the same arithmetic (``page.js``: ``entropyColour``), so a token's colour is one function of its
stored entropy everywhere; the browser tests check the page against :func:`entropy_colour`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

RGB = tuple[int, int, int]

STOPS: tuple[tuple[float, RGB], ...] = (
    (0.0, (255, 255, 255)),
    (0.33, (255, 237, 160)),
    (0.66, (253, 141, 60)),
    (1.0, (215, 48, 31)),
)
"""(position in [0, 1], colour) pairs, increasing positions, first at 0 and last at 1."""


def scale_max(entropies: Iterable[float], *, floor: float = 0.5) -> float:
    """The top of the scale: the 99th percentile of ``entropies`` rounded up to 0.5 nats.

    A percentile rather than the maximum, so that one outlier token does not wash every other
    token out to white; at least ``floor`` so that a nearly sure model does not look unsure.
    """
    values = sorted(h for h in entropies if math.isfinite(h))
    if not values:
        return floor
    p99 = values[min(len(values) - 1, math.floor(0.99 * (len(values) - 1) + 0.5))]
    return max(floor, math.ceil(p99 * 2.0) / 2.0)


def entropy_colour(h: float, top: float) -> RGB:
    """The colour of entropy ``h`` on a scale from 0 to ``top`` (values outside are clamped)."""
    t = 0.0 if not math.isfinite(h) or top <= 0 else min(1.0, max(0.0, h / top))
    for (p0, c0), (p1, c1) in itertools.pairwise(STOPS):
        if t <= p1:
            f = (t - p0) / (p1 - p0)
            # floor(x + 0.5), not round(): JavaScript's Math.round rounds halves the same way.
            return tuple(math.floor(a + (b - a) * f + 0.5) for a, b in zip(c0, c1, strict=True))  # type: ignore[return-value]
    return STOPS[-1][1]


def hex_colour(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def scale_json(top: float) -> dict[str, object]:
    """The scale as the pages receive it."""
    return {"max": top, "stops": [[p, list(c)] for p, c in STOPS]}
