"""The calculator's safe evaluator: a table of expressions and the rejections."""

from __future__ import annotations

import math

import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool

from tepo_agent.errors import ToolError
from tepo_agent.tools.calculator import (
    MAX_EXPRESSION_CHARS,
    evaluate,
    format_number,
    make_calculator_tool,
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2", 3),
        ("7 - 10", -3),
        ("6 * 7", 42),
        ("7 / 2", 3.5),
        ("7 // 2", 3),
        ("-7 // 2", -4),
        ("7 % 3", 1),
        ("-7 % 3", 2),
        ("2 ** 10", 1024),
        ("2 ^ 10", 1024),
        ("-3", -3),
        ("+3", 3),
        ("--3", 3),
        ("-2 ** 2", -4),
        ("(1 + 2) * (3 + 4)", 21),
        ("2 * 3 + 4", 10),
        ("2 * (3 + 4)", 14),
        ("1.5 * 4", 6.0),
        ("6 × 7 ÷ 2 − 1", 20.0),
        ("sqrt(16)", 4.0),
        ("log(e)", 1.0),
        ("log(8, 2)", 3.0),
        ("exp(0)", 1.0),
        ("sin(0)", 0.0),
        ("cos(0)", 1.0),
        ("abs(-5)", 5),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("min(3, 1, 2)", 1),
        ("max(3, 1, 2)", 3),
        ("pi", math.pi),
        ("2 ** -1", 0.5),
        ("10 ** 300", 10**300),
        ("2.0 ** 1000", 2.0**1000),
        ("(" * 200 + "1" + ")" * 200, 1),
        ("-" * 299 + "1", -1),
    ],
)
def test_evaluates_arithmetic(expression: str, expected: float) -> None:
    assert evaluate(expression) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os')", "cannot call"),
        ("x + 1", "unknown name 'x'"),
        ("(1).real", "unsupported syntax (Attribute)"),
        ("open('/etc/passwd')", "cannot call 'open'"),
        ("math.sqrt(4)", "cannot call"),
        ("(lambda: 1)()", "cannot call"),
        ("lambda: 1", "unsupported syntax (Lambda)"),
        ("[i for i in range(3)]", "unsupported syntax (ListComp)"),
        ("[1, 2][0]", "unsupported syntax (Subscript)"),
        ("'a' * 3", "unsupported literal 'a'"),
        ("True + 1", "unsupported literal True"),
        ("1j * 2", "unsupported literal 1j"),
        ("1 < 2", "unsupported syntax (Compare)"),
        ("1 << 5000", "unsupported operator LShift"),
        ("round(1.5, ndigits=1)", "keyword arguments"),
        ("sqrt(1, 2)", "sqrt takes 1 arguments"),
        ("9 ** 9 ** 9", "too large"),
        ("2 ** 5000", "too large"),
        ("(10 ** 1000) * (10 ** 1000)", "result too large"),
        ("10.0 ** 400", "float overflow"),
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("5 % 0", "division by zero"),
        ("sqrt(-1)", "math error"),
        ("(-8) ** 0.5", "complex"),
        ("round(1.5, 1000)", "ndigits"),
        ("1 +", "invalid expression"),
        ("", "empty expression"),
        ("1" + "+1" * MAX_EXPRESSION_CHARS, "the limit is"),
    ],
)
def test_rejects_unsafe_or_invalid_expressions(expression: str, message: str) -> None:
    with pytest.raises(ToolError) as caught:
        evaluate(expression)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(42, "42"), (0.1 + 0.2, "0.3"), (2 / 3, "0.666666666667"), (5.0, "5"), (1e20, "1e+20")],
)
def test_formats_numbers_for_the_model(value: float, text: str) -> None:
    assert format_number(value) == text


def test_tool_returns_text_and_reports_errors_as_error_tool_messages() -> None:
    tool = make_calculator_tool()
    assert tool.name == "calculator"
    assert "expression" in tool.args
    assert tool.invoke({"expression": "17 * 23"}) == "391"
    # Inside any LangChain/LangGraph agent the error reaches the model instead of ending the run.
    call = {"type": "tool_call", "id": "c1", "name": "calculator", "args": {"expression": "1/0"}}
    message = tool.invoke(call)
    assert message.status == "error" and "division by zero" in message.text
    with pytest.raises(ToolError, match="division by zero"):
        evaluate("1/0")


def test_brief_form_is_the_task_worlds_schema_and_the_same_tool() -> None:
    # The default model learned the task world's calculator from prompts holding exactly this
    # schema; the brief form must keep rendering it, and evaluate like the full tool.
    brief = make_calculator_tool(brief=True)
    assert convert_to_openai_tool(brief) == {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
                "type": "object",
            },
        },
    }
    full = convert_to_openai_tool(make_calculator_tool())["function"]
    assert "sqrt" in full["parameters"]["properties"]["expression"]["description"]
    assert brief.invoke({"expression": "17 * 23"}) == "391"
    call = {"type": "tool_call", "id": "c1", "name": "calculator", "args": {"expression": "1/0"}}
    assert brief.invoke(call).status == "error"
