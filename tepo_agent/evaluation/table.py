"""Plain-text tables of evaluations for the terminal (``tepo-agent eval``, demo, compare)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tepo_agent.evaluation.report import EvalSummary
from tepo_agent.evaluation.stats import Interval


def _num(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def render_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned first column, right-aligned others, two spaces apart."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = str(cells[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def summary_table(by_suite: Mapping[str, EvalSummary]) -> str:
    """One row per suite: accuracy [95% CI], calls per run (tool / no-tool items), format
    errors, ΔH<0 share, mean ΔH, and the pilot statistic with its counts."""
    header = [
        "suite", "items", "accuracy [95% CI]", "calls/run", "tool items", "no-tool items",
        "format err", "ΔH<0", "mean ΔH", "good|ΔH<0", "good|ΔH≥0",
    ]  # fmt: skip
    rows = []
    for suite, s in by_suite.items():
        p = s.pilot
        reducing = p.reducing_good + p.reducing_other
        rising = p.rising_good + p.rising_other
        rows.append(
            [
                suite,
                str(s.items),
                f"{s.accuracy.estimate:.3f} [{s.accuracy.low:.3f}, {s.accuracy.high:.3f}]",
                _num(s.calls_per_run),
                _num(s.calls_per_run_tool_items),
                _num(s.calls_per_run_no_tool_items),
                _pct(s.format_error_rate),
                _pct(s.entropy_reducing_share),
                _num(s.mean_delta_entropy, "+.3f"),
                f"{_pct(p.good_given_reducing)} ({p.reducing_good}/{reducing})",
                f"{_pct(p.good_given_rising)} ({p.rising_good}/{rising})",
            ]
        )
    return render_rows(header, rows)


def change_line(name: str, before: float, after: float, change: Interval) -> str:
    """``accuracy: 0.310 -> 0.420, change +0.110, paired 95% CI [+0.050, +0.170] (n = 96)``."""
    return (
        f"{name}: {before:.3f} -> {after:.3f}, change {change.estimate:+.3f}, paired 95% CI "
        f"[{change.low:+.3f}, {change.high:+.3f}] (n = {change.n} items)"
    )


__all__ = ["change_line", "render_rows", "summary_table"]
