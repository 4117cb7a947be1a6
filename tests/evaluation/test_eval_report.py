"""An evaluation's figures from hand-built item results, and which calls count as used."""

from __future__ import annotations

import pytest

from tepo_agent.agent.state import ToolCallRecord
from tepo_agent.errors import ConfigError
from tepo_agent.evaluation import (
    CallOutcome,
    ItemResult,
    call_outcomes,
    error_kind,
    paired_change,
    result_used,
    summarize,
    summarize_by_suite,
)


def _call(dh: float | None, used: bool = True, error: str | None = None) -> CallOutcome:
    return CallOutcome(name="calculator", error=error, delta_entropy=dh, used=used)  # type: ignore[arg-type]


def _item(
    task: str, score: float, calls: tuple[CallOutcome, ...] = (), *, needs_tool: bool = True,
    suite: str = "math", sample: int = 0,
) -> ItemResult:  # fmt: skip
    return ItemResult(
        task_id=task, suite=suite, needs_tool=needs_tool, sample=sample, score=score,
        answer="x", status="ok", calls=calls, entropy_kind="exact",
    )  # fmt: skip


TABLE = [
    # a correct run whose reducing call was used: a good call with ΔH < 0
    _item("a", 1.0, (_call(-0.5),)),
    # a correct run: one reducing unused call, one rising used call
    _item("b", 1.0, (_call(-0.1, used=False), _call(+0.2))),
    # a wrong run: its reducing call is not a good call (the run is wrong)
    _item("c", 0.0, (_call(-0.3),)),
    # a wrong run with a malformed call (no ΔH: the run stopped)
    _item("d", 0.0, (_call(None, used=False, error="malformed"),)),
    # items that need no tool: one answered directly, one with an unnecessary call
    _item("e", 1.0, needs_tool=False),
    _item("f", 1.0, (_call(+0.4),), needs_tool=False),
]


def test_summary_of_a_hand_built_table() -> None:
    s = summarize(TABLE)
    assert (s.items, s.runs, s.calls, s.no_tool_items) == (6, 6, 6, 2)
    assert s.accuracy.estimate == pytest.approx(4 / 6)
    assert s.calls_per_run == pytest.approx(1.0)
    assert s.calls_per_run_tool_items == pytest.approx(5 / 4)
    assert s.calls_per_run_no_tool_items == pytest.approx(1 / 2)
    assert s.format_errors == {
        "malformed": 1, "unknown_tool": 0, "tool_error": 0, "timeout": 0,
    }  # fmt: skip
    assert s.format_error_rate == pytest.approx(1 / 6)
    # known ΔH: -0.5, -0.1, +0.2, -0.3, +0.4 -> 3 of 5 reducing, mean -0.06
    assert s.entropy_reducing_share == pytest.approx(3 / 5)
    assert s.mean_delta_entropy == pytest.approx(-0.06)
    p = s.pilot
    assert (p.reducing_good, p.reducing_other, p.rising_good, p.rising_other) == (1, 2, 2, 0)
    assert p.good_given_reducing == pytest.approx(1 / 3)
    assert p.good_given_rising == pytest.approx(1.0)
    assert s.entropy_kinds == ("exact",)


def test_samples_of_an_item_average_into_its_score() -> None:
    rows = [_item("a", 1.0, sample=0), _item("a", 0.0, sample=1), _item("b", 1.0)]
    s = summarize(rows)
    assert (s.items, s.runs) == (2, 3)
    assert s.accuracy.estimate == pytest.approx(0.75)  # items: a = 0.5, b = 1.0


def test_by_suite_and_all() -> None:
    rows = [*TABLE, _item("k", 0.0, suite="knowledge")]
    by = summarize_by_suite(rows)
    assert list(by) == ["math", "knowledge", "all"]
    assert by["knowledge"].items == 1 and by["all"].items == 7


def test_paired_change_over_the_same_items() -> None:
    before = [_item("a", 0.0, (_call(0.1), _call(0.1))), _item("b", 1.0, (_call(-0.1),))]
    after = [_item("b", 1.0), _item("a", 1.0, (_call(-0.2),))]  # order does not matter
    acc = paired_change(before, after)
    assert acc.estimate == pytest.approx(0.5) and acc.n == 2
    calls = paired_change(before, after, metric="calls")
    assert calls.estimate == pytest.approx(-1.0)  # a: 2 -> 1, b: 1 -> 0
    with pytest.raises(ConfigError, match="different items"):
        paired_change(before, [_item("a", 1.0), _item("z", 1.0)])


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (None, None),
        ("error: malformed tool call (bad json). Call a tool as ...", "malformed"),
        ("error: unknown tool 'calc'; tools: calculator, search", "unknown_tool"),
        ("error: ValidationError: 1 validation error for _CalculatorArgs", "tool_error"),
        ("error: TimeoutError: the tool took longer than 10 s", "timeout"),
        ("error: division by zero", "tool_error"),
    ],
)
def test_error_kinds(error: str | None, kind: str | None) -> None:
    assert error_kind(error) == kind


def test_a_result_is_used_when_its_number_or_a_new_name_reappears_later() -> None:
    assert result_used("391", ["The answer is 391."], "What is 17 * 23?")
    assert result_used("391.0", ["391"], "What is 17 * 23?")
    assert not result_used("391", ["The answer is 390."], "What is 17 * 23?")
    doc = "Bora Kel is a chemist. Bora Kel was born in Zunia."
    # the name the question already holds is not evidence; the city it revealed is
    assert result_used(doc, ["The answer is Zunia."], "Where was Bora Kel born?")
    assert not result_used(doc, ["The answer is Bora Kel."], "Where was Bora Kel born?")
    # a multi-hop search uses a result by searching for what it revealed
    company = "Tarcorp is a company founded by Mira Sol. Its headquarters are in Lexia."
    assert result_used(company, ['{"query": "Mira Sol"}', "Kandia"], "Who founded Tarcorp?")
    # "The"/"Its" that start sentences are not names
    assert not result_used(company, ["The answer is its own."], "Who founded Tarcorp?")
    assert not result_used(None, ["x"], "q")


def test_call_outcomes_from_agent_records() -> None:
    def rec(result: str | None, error: str | None, dh: float | None, args: dict) -> ToolCallRecord:
        return ToolCallRecord(
            tool_call_id="1", name="search", args=args, result=result, error=error,
            latency_s=0.0, delta_entropy=dh,
        )  # fmt: skip

    records = [
        rec("Xocorp is a company founded by Ada Lune.", None, -0.2, {"query": "Xocorp"}),
        rec(None, "error: unknown tool 'lookup'; tools: search", None, {}),
        rec("Ada Lune was born in Peria.", None, 0.1, {"query": "Ada Lune"}),
    ]
    out = call_outcomes(records, "The answer is Peria.", "Where was the founder of Xocorp born?")
    assert [c.used for c in out] == [True, False, True]
    assert [c.error for c in out] == [None, "unknown_tool", None]
    assert out[0].reducing and not out[2].reducing
