"""An evaluation's figures from its item results: pure functions, tested on hand-built tables.

:func:`summarize` turns :class:`~tepo_agent.evaluation.items.ItemResult` s into an
:class:`EvalSummary`:

- **accuracy** with its 95% interval, over items (an item's score is the mean over its samples;
  Wilson interval when every score is 0 or 1, else Student t);
- **tool calls per run**, overall and split by items that need a tool and items that do not
  (the sparse reward can only cut calls on the latter);
- **format errors by kind** (malformed, unknown tool; tool errors and timeouts beside them)
  and the format-error rate per call;
- **the share of entropy-reducing calls** (ΔH_k < 0 among calls with a known ΔH) and mean ΔH;
- **the paper's pilot statistic**: a 2×2 table of calls by (ΔH_k < 0) × (good call: the run
  is correct and the call's result was used), and P(good | ΔH < 0) beside P(good | ΔH ≥ 0).

:func:`paired_scores` lines two evaluations up item by item for a paired interval.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tepo_agent.errors import ConfigError
from tepo_agent.evaluation.calls import ERROR_KINDS, FORMAT_ERROR_KINDS
from tepo_agent.evaluation.items import ItemResult
from tepo_agent.evaluation.stats import Interval, paired_interval, score_interval


@dataclass(frozen=True)
class PilotTable:
    """Calls with a known ΔH, by entropy change and by whether they were good calls.

    Attributes:
        reducing_good, reducing_other: Calls with ΔH_k < 0 that were / were not good calls.
        rising_good, rising_other: Calls with ΔH_k ≥ 0 that were / were not good calls.
    """

    reducing_good: int = 0
    reducing_other: int = 0
    rising_good: int = 0
    rising_other: int = 0

    @property
    def good_given_reducing(self) -> float | None:
        """P(good call | ΔH < 0): the paper's pilot statistic (None without reducing calls)."""
        n = self.reducing_good + self.reducing_other
        return self.reducing_good / n if n else None

    @property
    def good_given_rising(self) -> float | None:
        """P(good call | ΔH ≥ 0), the comparison the pilot statistic needs."""
        n = self.rising_good + self.rising_other
        return self.rising_good / n if n else None

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "good_given_reducing": self.good_given_reducing,
            "good_given_rising": self.good_given_rising,
        }


@dataclass(frozen=True)
class EvalSummary:
    """The figures of one evaluation (see the module docstring).

    Attributes:
        items, runs: Distinct items and runs (items × samples).
        accuracy: Mean item score with its interval.
        calls_per_run: Executed tool calls per run.
        calls_per_run_tool_items / calls_per_run_no_tool_items: The same over runs of items
            that need a tool / need none (None when there are no such items).
        no_tool_items: Items that need no tool.
        calls: Executed calls in all.
        format_errors: Calls per error kind (``tool_error`` is not a format error).
        format_error_rate: Format errors / calls (0 with no calls).
        entropy_reducing_share: Calls with ΔH < 0 / calls with a known ΔH (None if none known).
        mean_delta_entropy: Mean known ΔH (None if none known).
        pilot: The pilot statistic's table.
        entropy_kinds: Which entropies the ΔH figures rest on (``exact``, or an estimator).
    """

    items: int
    runs: int
    accuracy: Interval
    calls_per_run: float
    calls_per_run_tool_items: float | None
    calls_per_run_no_tool_items: float | None
    no_tool_items: int
    calls: int
    format_errors: dict[str, int]
    format_error_rate: float
    entropy_reducing_share: float | None
    mean_delta_entropy: float | None
    pilot: PilotTable
    entropy_kinds: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["accuracy"] = self.accuracy.to_json()
        data["pilot"] = self.pilot.to_json()
        data["entropy_kinds"] = list(self.entropy_kinds)
        return data


def item_scores(results: Sequence[ItemResult]) -> dict[str, float]:
    """Each item's score: the mean over its samples, keyed by task id (first-seen order)."""
    by_item: dict[str, list[float]] = {}
    for r in results:
        by_item.setdefault(r.task_id, []).append(r.score)
    return {k: statistics.fmean(v) for k, v in by_item.items()}


def item_calls(results: Sequence[ItemResult]) -> dict[str, float]:
    """Each item's executed tool calls per run (mean over its samples), keyed by task id."""
    by_item: dict[str, list[float]] = {}
    for r in results:
        by_item.setdefault(r.task_id, []).append(float(len(r.calls)))
    return {k: statistics.fmean(v) for k, v in by_item.items()}


def _calls_per_run(results: Sequence[ItemResult]) -> float | None:
    return statistics.fmean(len(r.calls) for r in results) if results else None


def pilot_table(results: Sequence[ItemResult]) -> PilotTable:
    """The pilot statistic's 2×2 table over every call with a known ΔH."""
    counts: Counter[str] = Counter()
    for r in results:
        for call in r.calls:
            if call.delta_entropy is None:
                continue
            good = r.correct and call.used
            side = "reducing" if call.reducing else "rising"
            counts[f"{side}_{'good' if good else 'other'}"] += 1
    return PilotTable(**counts)


def summarize(results: Sequence[ItemResult]) -> EvalSummary:
    """The figures of the module docstring over ``results``."""
    if not results:
        raise ConfigError("nothing to summarize: the evaluation has no results")
    scores = item_scores(results)
    calls = [c for r in results for c in r.calls]
    errors = Counter(c.error for c in calls if c.error is not None)
    known = [c.delta_entropy for c in calls if c.delta_entropy is not None]
    format_errors = sum(errors[k] for k in FORMAT_ERROR_KINDS)
    no_tool = [r for r in results if not r.needs_tool]
    return EvalSummary(
        items=len(scores),
        runs=len(results),
        accuracy=score_interval(list(scores.values())),
        calls_per_run=len(calls) / len(results),
        calls_per_run_tool_items=_calls_per_run([r for r in results if r.needs_tool]),
        calls_per_run_no_tool_items=_calls_per_run(no_tool),
        no_tool_items=len({r.task_id for r in no_tool}),
        calls=len(calls),
        format_errors={k: errors[k] for k in ERROR_KINDS},
        format_error_rate=format_errors / len(calls) if calls else 0.0,
        entropy_reducing_share=sum(d < 0 for d in known) / len(known) if known else None,
        mean_delta_entropy=statistics.fmean(known) if known else None,
        pilot=pilot_table(results),
        entropy_kinds=tuple(sorted({r.entropy_kind for r in results if r.entropy_kind})),
    )


def summarize_by_suite(results: Sequence[ItemResult]) -> dict[str, EvalSummary]:
    """One summary per suite, in first-seen order, and ``"all"`` over every result."""
    suites: dict[str, list[ItemResult]] = {}
    for r in results:
        suites.setdefault(r.suite, []).append(r)
    out = {suite: summarize(rs) for suite, rs in suites.items()}
    out["all"] = summarize(results)
    return out


def paired_scores(
    before: Sequence[ItemResult], after: Sequence[ItemResult], *, metric: str = "score"
) -> tuple[list[float], list[float]]:
    """Per-item ``score`` or ``calls`` of two evaluations, lined up over the same items.

    Raises ``ConfigError`` unless both cover exactly the same task ids: a paired comparison
    over different items would compare item difficulty, not policies.
    """
    pick = item_scores if metric == "score" else item_calls
    if metric not in ("score", "calls"):
        raise ConfigError(f"metric must be 'score' or 'calls', got {metric!r}")
    a, b = pick(before), pick(after)
    if set(a) != set(b):
        missing = sorted(set(a) ^ set(b))[:3]
        raise ConfigError(
            f"the two evaluations cover different items (e.g. {missing}); evaluate both on the "
            "same suite, n and seed"
        )
    order = list(a)
    return [a[k] for k in order], [b[k] for k in order]


def paired_change(
    before: Sequence[ItemResult], after: Sequence[ItemResult], *, metric: str = "score"
) -> Interval:
    """The paired 95% interval of (after − before) per item, for accuracy or tool calls."""
    a, b = paired_scores(before, after, metric=metric)
    return paired_interval(a, b)


__all__ = [
    "EvalSummary",
    "PilotTable",
    "item_calls",
    "item_scores",
    "paired_change",
    "paired_scores",
    "pilot_table",
    "summarize",
    "summarize_by_suite",
]
