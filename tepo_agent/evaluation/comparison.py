"""The figures of a reward comparison: arms × seeds of held-out evaluations → one table.

Pure functions over :class:`~tepo_agent.evaluation.items.ItemResult` s (tested on hand-built
tables). Per arm, over its seeds: mean ± sd of accuracy, tool calls per run, calls per run on
items that need no tool, the share of entropy-reducing calls and wall time; each mean relative to
the reference arm's (``outcome``); and the paired 95% interval of (arm − reference) per item,
pooled over the seeds both ran (seed s of the arm is paired with seed s of the reference, item
by item, so every pair saw the same item from the same starting policy and budget).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tepo_agent.errors import ConfigError
from tepo_agent.evaluation.items import ItemResult
from tepo_agent.evaluation.report import PilotTable, paired_scores, pilot_table, summarize
from tepo_agent.evaluation.stats import Interval, mean_sd, paired_interval, relative_change

ArmResults = Mapping[str, Mapping[int, Sequence[ItemResult]]]
"""arm → seed → the final policy's held-out items."""


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation over seeds."""

    mean: float
    sd: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.sd:.3f}"


@dataclass(frozen=True)
class ArmRow:
    """One arm of the comparison table (see the module docstring).

    Attributes:
        arm, seeds: The arm and how many seeds it finished.
        accuracy, calls, no_tool_calls, reducing_share, wall_s: Mean ± sd over seeds.
        accuracy_rel, calls_rel: Mean relative to the reference arm's (None for the reference
            itself or a zero reference mean).
        accuracy_vs_ref, calls_vs_ref: Paired 95% intervals of (arm − reference) per item,
            pooled over shared seeds (None for the reference or without shared seeds).
        pilot: The pilot statistic's table pooled over seeds.
    """

    arm: str
    seeds: int
    accuracy: Spread
    calls: Spread
    no_tool_calls: Spread
    reducing_share: Spread
    wall_s: Spread
    accuracy_rel: float | None
    calls_rel: float | None
    accuracy_vs_ref: Interval | None
    calls_vs_ref: Interval | None
    pilot: PilotTable

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["pilot"] = self.pilot.to_json()
        return data


def _spread(values: Sequence[float]) -> Spread:
    mean, sd = mean_sd(values)
    return Spread(mean, sd)


def _pooled(
    arm: Mapping[int, Sequence[ItemResult]],
    ref: Mapping[int, Sequence[ItemResult]],
    metric: str,
) -> Interval | None:
    before: list[float] = []
    after: list[float] = []
    for seed in sorted(set(arm) & set(ref)):
        a, b = paired_scores(ref[seed], arm[seed], metric=metric)
        before += a
        after += b
    return paired_interval(before, after) if before else None


def comparison_rows(
    results: ArmResults,
    wall_s: Mapping[str, Mapping[int, float]],
    *,
    reference: str = "outcome",
) -> list[ArmRow]:
    """One :class:`ArmRow` per arm with at least one finished seed, in the given arm order."""
    ref = results.get(reference, {})
    ref_summaries = [summarize(items) for items in ref.values()]
    ref_acc = _spread([s.accuracy.estimate for s in ref_summaries]).mean if ref else None
    ref_calls = _spread([s.calls_per_run for s in ref_summaries]).mean if ref else None
    rows = []
    for arm, by_seed in results.items():
        if not by_seed:
            continue
        sums = [summarize(items) for items in by_seed.values()]
        counts: Counter[str] = Counter()
        for items in by_seed.values():
            counts.update(asdict(pilot_table(items)))
        is_ref = arm == reference or not ref
        rows.append(
            ArmRow(
                arm=arm,
                seeds=len(by_seed),
                accuracy=_spread([s.accuracy.estimate for s in sums]),
                calls=_spread([s.calls_per_run for s in sums]),
                no_tool_calls=_spread([s.calls_per_run_no_tool_items or 0.0 for s in sums]),
                reducing_share=_spread([s.entropy_reducing_share or 0.0 for s in sums]),
                wall_s=_spread([wall_s.get(arm, {}).get(seed, 0.0) for seed in by_seed]),
                accuracy_rel=None
                if is_ref or ref_acc is None
                else relative_change(_spread([s.accuracy.estimate for s in sums]).mean, ref_acc),
                calls_rel=None
                if is_ref or ref_calls is None
                else relative_change(_spread([s.calls_per_run for s in sums]).mean, ref_calls),
                accuracy_vs_ref=None if is_ref else _pooled(by_seed, ref, "score"),
                calls_vs_ref=None if is_ref else _pooled(by_seed, ref, "calls"),
                pilot=PilotTable(**counts),
            )
        )
    if not rows:
        raise ConfigError("no finished arm to compare")
    return rows


def _rel(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:+.0f}%"


def _ci(value: Interval | None) -> str:
    return "—" if value is None else f"{value.estimate:+.3f} [{value.low:+.3f}, {value.high:+.3f}]"


def _pilot(p: PilotTable) -> str:
    n = p.reducing_good + p.reducing_other
    share = "n/a" if p.good_given_reducing is None else f"{100 * p.good_given_reducing:.0f}%"
    return f"{share} ({p.reducing_good}/{n})"


def markdown_table(rows: Sequence[ArmRow], *, reference: str = "outcome") -> str:
    """The comparison as a Markdown table (mean ± sd over seeds; intervals vs ``reference``)."""
    head = (
        "| arm | seeds | accuracy | vs outcome | paired Δacc [95% CI] | calls/item | vs outcome "
        "| paired Δcalls [95% CI] | calls on no-tool items | ΔH<0 share | good\\|ΔH<0 | wall s |"
    ).replace("outcome", reference)
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r.arm} | {r.seeds} | {r.accuracy} | {_rel(r.accuracy_rel)} "
            f"| {_ci(r.accuracy_vs_ref)} | {r.calls} | {_rel(r.calls_rel)} | {_ci(r.calls_vs_ref)} "
            f"| {r.no_tool_calls} | {r.reducing_share} | {_pilot(r.pilot)} "
            f"| {r.wall_s.mean:.0f} ± {r.wall_s.sd:.0f} |"
        )
    return "\n".join(lines)


__all__ = ["ArmResults", "ArmRow", "Spread", "comparison_rows", "markdown_table"]
