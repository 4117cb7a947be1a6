"""Statistics of an evaluation: intervals for accuracy and for paired differences.

Pure functions over plain numbers, tested against tables worked out by hand:

- :func:`wilson_interval` — the Wilson score interval of a proportion (k successes out of n); it
  stays inside [0, 1] and is sensible at 0/n and n/n, where the normal interval collapses.
- :func:`mean_interval` — the Student t interval of a mean (scores that are not all 0/1, or
  per-item means over several samples).
- :func:`paired_interval` — the Student t interval of the mean of paired differences b_i − a_i
  over the same items (before/after, candidate/live, arm/outcome). Pairing removes the
  item-difficulty variance both sides share, so it detects a change that unpaired intervals,
  which overlap, would miss.
- :func:`t_quantile` — Student t quantiles without SciPy: exact for 1 and 2 degrees of freedom,
  the Cornish–Fisher expansion (Abramowitz & Stegun 26.7.5) above, within 1e-3 of the exact
  value from 4 degrees of freedom (4e-3 at 3).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tepo_agent.errors import ConfigError


@dataclass(frozen=True)
class Interval:
    """An estimate with its two-sided confidence interval.

    Attributes:
        estimate: The point estimate (a mean, a proportion, a mean difference).
        low, high: The interval's ends.
        n: How many observations (items or pairs) it rests on.
        confidence: Its nominal coverage (0.95 for a 95% interval).
    """

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0 (the change is significant)."""
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")


def normal_quantile(p: float) -> float:
    """The standard normal quantile z_p."""
    return statistics.NormalDist().inv_cdf(p)


def t_quantile(p: float, df: int) -> float:
    """The Student t quantile t_{p, df} (see the module docstring for its accuracy)."""
    if not 0 < p < 1:
        raise ConfigError(f"p must be in (0, 1), got {p}")
    if df < 1:
        raise ConfigError(f"degrees of freedom must be >= 1, got {df}")
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    x = normal_quantile(p)
    g1 = (x**3 + x) / 4
    g2 = (5 * x**5 + 16 * x**3 + 3 * x) / 96
    g3 = (3 * x**7 + 19 * x**5 + 17 * x**3 - 15 * x) / 384
    g4 = (79 * x**9 + 776 * x**7 + 1482 * x**5 - 1920 * x**3 - 945 * x) / 92160
    v = float(df)
    return x + g1 / v + g2 / v**2 + g3 / v**3 + g4 / v**4


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """The Wilson score interval of the proportion ``successes / n``."""
    _check_confidence(confidence)
    if n < 1 or not 0 <= successes <= n:
        raise ConfigError(f"need 0 <= successes <= n and n >= 1, got {successes}/{n}")
    z = normal_quantile(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends, no rounding residue
    high = 1.0 if successes == n else min(1.0, centre + half)
    return Interval(p, low, high, n, confidence)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The Student t interval of the mean of ``values`` (one value: a zero-width interval)."""
    _check_confidence(confidence)
    if not values:
        raise ConfigError("an interval needs at least one value")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Interval(mean, mean, mean, 1, confidence)
    sd = statistics.stdev(values)
    half = t_quantile(0.5 + confidence / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values), confidence)


def score_interval(scores: Sequence[float], confidence: float = 0.95) -> Interval:
    """Accuracy's interval: Wilson when every score is 0 or 1, else the t interval cut to
    [0, 1]."""
    if scores and all(s in (0.0, 1.0) for s in scores):
        return wilson_interval(int(sum(scores)), len(scores), confidence)
    ci = mean_interval(scores, confidence)  # scores live in [0, 1]: so does their mean
    return Interval(ci.estimate, max(0.0, ci.low), min(1.0, ci.high), ci.n, ci.confidence)


def paired_interval(
    before: Sequence[float], after: Sequence[float], confidence: float = 0.95
) -> Interval:
    """The t interval of the mean of ``after[i] - before[i]`` over the same items, in order."""
    if len(before) != len(after):
        raise ConfigError(
            f"paired values must cover the same items: {len(before)} before, {len(after)} after"
        )
    return mean_interval([b - a for a, b in zip(before, after, strict=True)], confidence)


def relative_change(value: float, reference: float) -> float | None:
    """``value / reference - 1`` (None when the reference is 0: no relative change exists)."""
    if reference == 0:
        return None
    return value / reference - 1


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ConfigError("mean_sd needs at least one value")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


__all__ = [
    "Interval",
    "mean_interval",
    "mean_sd",
    "normal_quantile",
    "paired_interval",
    "relative_change",
    "score_interval",
    "t_quantile",
    "wilson_interval",
]
