"""The comparison table from hand-built arms × seeds of held-out items."""

from __future__ import annotations

import pytest

from tepo_agent.errors import ConfigError
from tepo_agent.evaluation import CallOutcome, ItemResult
from tepo_agent.evaluation.comparison import comparison_rows, markdown_table

CALL = CallOutcome(name="calculator", error=None, delta_entropy=-0.1, used=True)


def _items(scores: list[float], calls: list[int], no_tool: int = 0) -> list[ItemResult]:
    return [
        ItemResult(
            task_id=f"t{i}",
            suite="math",
            needs_tool=i >= no_tool,
            sample=0,
            score=s,
            answer="x",
            status="ok",
            calls=(CALL,) * c,
        )
        for i, (s, c) in enumerate(zip(scores, calls, strict=True))
    ]


RESULTS = {
    "outcome": {
        1: _items([1, 0, 1, 0], [2, 2, 2, 2], no_tool=2),  # acc 0.5, 2 calls/item
        2: _items([1, 1, 0, 0], [2, 2, 2, 2], no_tool=2),  # acc 0.5
    },
    "sparse": {
        1: _items([1, 0, 1, 0], [1, 1, 0, 0], no_tool=2),  # acc 0.5, 0.5 calls/item
        2: _items([1, 1, 0, 0], [0, 0, 1, 1], no_tool=2),
    },
    "dense": {1: _items([1, 1, 1, 0], [2, 2, 2, 2], no_tool=2)},  # acc 0.75, one seed
}
WALL = {"outcome": {1: 10.0, 2: 14.0}, "sparse": {1: 8.0, 2: 8.0}, "dense": {1: 12.0}}


def test_rows_by_hand() -> None:
    outcome, sparse, dense = comparison_rows(RESULTS, WALL)
    assert (outcome.arm, outcome.seeds, outcome.accuracy.mean, outcome.accuracy.sd) == (
        "outcome", 2, 0.5, 0.0,
    )  # fmt: skip
    assert outcome.calls_rel is None and outcome.accuracy_vs_ref is None
    assert (outcome.wall_s.mean, outcome.wall_s.sd) == pytest.approx((12.0, 2.8284), abs=1e-4)
    # sparse: 0.5 calls/item against 2 -> -75%; accuracy equal
    assert sparse.calls.mean == pytest.approx(0.5) and sparse.calls_rel == pytest.approx(-0.75)
    assert sparse.accuracy_rel == pytest.approx(0.0)
    # no-tool items are t0, t1: seed 1 made 1 + 1 calls there, seed 2 none -> 1.0 and 0.0
    assert sparse.no_tool_calls.mean == pytest.approx(0.5)
    # paired over 8 pooled items: every item -2 or -1 calls; accuracy differences all zero
    assert sparse.calls_vs_ref is not None and sparse.calls_vs_ref.n == 8
    assert sparse.calls_vs_ref.estimate == pytest.approx(-1.5) and sparse.calls_vs_ref.high < 0
    assert sparse.accuracy_vs_ref is not None
    assert (sparse.accuracy_vs_ref.low, sparse.accuracy_vs_ref.high) == (0.0, 0.0)
    # dense ran seed 1 only: paired with outcome's seed 1 (t1 flips 0 -> 1, t2 stays 1)
    assert dense.seeds == 1 and dense.accuracy_rel == pytest.approx(0.5)
    assert dense.accuracy_vs_ref is not None and dense.accuracy_vs_ref.n == 4
    assert dense.accuracy_vs_ref.estimate == pytest.approx(0.25)
    assert dense.pilot.reducing_good == 6 and dense.pilot.reducing_other == 2


def test_markdown_has_one_line_per_arm() -> None:
    md = markdown_table(comparison_rows(RESULTS, WALL))
    lines = md.splitlines()
    assert len(lines) == 5 and lines[2].startswith("| outcome | 2 |")
    assert "-75%" in lines[3] and "-1.500 [" in lines[3]


def test_nothing_finished_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no finished arm"):
        comparison_rows({"outcome": {}}, {})
