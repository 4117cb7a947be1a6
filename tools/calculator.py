"""The ``calculator`` tool: arithmetic through a safe AST evaluator (never ``eval``).

The expression is parsed with :func:`ast.parse` in ``eval`` mode and walked node by node; only
these nodes are accepted:

- int and float literals (not bool, not complex, not strings);
- binary ``+ - * / // % **``, unary ``+ -``, parentheses;
- calls of a fixed table of functions by bare name: ``sqrt log exp sin cos tan abs round min
  max`` (``log(x)`` is natural, ``log(x, base)`` any base);
- the constants ``pi`` and ``e``.

Anything else (other names, attributes, subscripts, lambdas, comprehensions, keyword
arguments, comparisons) is rejected with a :class:`~tepo_agent.errors.ToolError` naming the
construct. For convenience the characters ``× ÷ −`` and ``^`` are read as ``* / - **``.

Abuse guards: the expression is at most :data:`MAX_EXPRESSION_CHARS` characters; an integer
power whose result would exceed :data:`MAX_INT_BITS` bits is refused before it is computed, and
every intermediate integer is checked against the same bound, so ``9**9**9`` fails at once
instead of eating the CPU. Float overflow, division by zero and domain errors become readable
errors.

Run it directly: ``tepo-agent tool calculator '{"expression": "2 * (3 + 4)"}'``.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from tepo_agent.errors import ToolError

MAX_EXPRESSION_CHARS = 500
"""Longest expression accepted, in characters."""

MAX_INT_BITS = 4096
"""Largest integer magnitude (in bits, about 1233 decimal digits) any step may produce."""

MAX_ROUND_DIGITS = 100
"""Largest ``ndigits`` accepted by ``round``."""

Number = int | float

_BINARY: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}

_UNARY: dict[type[ast.unaryop], Callable[[Number], Number]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}

_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


def _log(x: Number, base: Number | None = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _round(x: Number, ndigits: int | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round: ndigits must be an integer between -100 and 100, got {ndigits!r}")
    return round(x, ndigits)


# name -> (function, min args, max args)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int]] = {
    "sqrt": (math.sqrt, 1, 1),
    "log": (_log, 1, 2),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "min": (min, 1, 64),
    "max": (max, 1, 64),
}

_ALLOWED_NAMES = ", ".join([*sorted(_FUNCTIONS), *sorted(_CONSTANTS)])


def _check_size(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError(
            f"result too large: more than {MAX_INT_BITS} bits; use floats (e.g. 2.0**5000) "
            "or a smaller expression"
        )
    if isinstance(value, complex):
        raise ToolError("the result is a complex number; only real arithmetic is supported")
    return value


def _power(base: Number, exponent: Number) -> Number:
    # bits(base**exp) ≈ exp * log2|base|: refuse before computing a gigantic integer.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_INT_BITS
    ):
        raise ToolError(
            f"{base}**{exponent} is too large (over {MAX_INT_BITS} bits); "
            "use a float base (e.g. 2.0**5000) for an approximate value"
        )
    return base**exponent


class _Evaluator:
    """Walks a parsed expression; every method returns a real number or raises ToolError."""

    def visit(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ToolError(f"unsupported literal {value!r}: only numbers are allowed")
            return _check_size(value)
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                raise ToolError(f"unsupported operator {type(node.op).__name__}")
            left, right = self.visit(node.left), self.visit(node.right)
            if isinstance(node.op, ast.Pow):
                return _check_size(_power(left, right))
            return _check_size(op(left, right))
        if isinstance(node, ast.UnaryOp):
            unary = _UNARY.get(type(node.op))
            if unary is None:
                raise ToolError(f"unsupported operator {type(node.op).__name__}")
            return unary(self.visit(node.operand))
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise ToolError(f"unknown name {node.id!r}; allowed: {_ALLOWED_NAMES}")
        if isinstance(node, ast.Call):
            return self._call(node)
        raise ToolError(
            f"unsupported syntax ({type(node).__name__}); use numbers, + - * / // % **, "
            f"parentheses and {_ALLOWED_NAMES}"
        )

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
            raise ToolError(f"cannot call {shown!r}; allowed functions: {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise ToolError(f"{node.func.id}: keyword arguments are not supported")
        function, low, high = _FUNCTIONS[node.func.id]
        if not low <= len(node.args) <= high:
            raise ToolError(
                f"{node.func.id} takes {low}" + (f" to {high}" if high > low else "") + " arguments"
            )
        args = [self.visit(arg) for arg in node.args]
        return _check_size(function(*args))


def _normalise(expression: str) -> str:
    for symbol, replacement in (("×", "*"), ("÷", "/"), ("−", "-"), ("^", "**")):
        expression = expression.replace(symbol, replacement)
    return expression.strip()


def evaluate(expression: str) -> Number:
    """Evaluate an arithmetic expression; :class:`ToolError` on anything unsafe or invalid."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(
            f"expression is {len(expression)} characters; the limit is {MAX_EXPRESSION_CHARS}"
        )
    text = _normalise(expression)
    if not text:
        raise ToolError("empty expression: pass arithmetic such as '2 * (3 + 4)'")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"invalid expression {expression!r}: {exc.msg}") from None
    except (RecursionError, MemoryError):
        raise ToolError("expression is nested too deeply") from None
    try:
        return _Evaluator().visit(tree)
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("float overflow: the result is too large to represent") from None
    except ValueError as exc:
        raise ToolError(f"math error: {exc}") from None
    except TypeError as exc:
        raise ToolError(f"invalid arguments: {exc}") from None
    except RecursionError:
        raise ToolError("expression is nested too deeply") from None


def format_number(value: Number) -> str:
    """Integers exactly; floats to 12 significant digits (``0.1 + 0.2`` shows as ``0.3``)."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return format(value, ".12g")


DESCRIPTION = (
    "Evaluate an arithmetic expression exactly and return the number. Use it for any "
    "multiplication, division or multi-step arithmetic instead of computing in your head."
)
"""The tool's description in :func:`make_calculator_tool`'s full form."""

BRIEF_DESCRIPTION = "Evaluate arithmetic."
"""The description in the brief form (the task world's, which the default model was trained on)."""


class CalculatorArgs(BaseModel):
    expression: str = Field(
        description="Arithmetic expression, e.g. '(17 * 23) - sqrt(16) / 2'. Supports "
        "+ - * / // % ** (or ^), parentheses, sqrt, log, exp, sin, cos, tan, abs, round, "
        "min, max, pi, e."
    )


class BriefCalculatorArgs(BaseModel):
    """The same argument without a description: the brief schema costs fewer prompt tokens."""

    expression: str


def _calculate(expression: str) -> str:
    return format_number(evaluate(expression))


async def _acalculate(expression: str) -> str:
    # Microseconds of pure arithmetic: run inline rather than in LangChain's thread executor,
    # whose thread start-up costs more than the evaluation.
    return _calculate(expression)


def make_calculator_tool(*, brief: bool = False) -> BaseTool:
    """The LangChain ``calculator`` tool: evaluates one expression, returns the number as text.

    The tool's schema is part of every prompt. ``brief=True`` gives the one-line description
    :data:`BRIEF_DESCRIPTION` and an undocumented argument: the task world's form
    (:func:`tepo_agent.tasks.world.world_tools`), for a model with a short context that learned
    the tool in training; the default gives a model the full description and supported syntax.
    """
    return StructuredTool.from_function(
        func=_calculate,
        coroutine=_acalculate,
        name="calculator",
        description=BRIEF_DESCRIPTION if brief else DESCRIPTION,
        args_schema=BriefCalculatorArgs if brief else CalculatorArgs,
        handle_tool_error=True,  # ToolError reaches the model as an error ToolMessage
    )


__all__ = [
    "BRIEF_DESCRIPTION",
    "DESCRIPTION",
    "MAX_EXPRESSION_CHARS",
    "MAX_INT_BITS",
    "BriefCalculatorArgs",
    "CalculatorArgs",
    "evaluate",
    "format_number",
    "make_calculator_tool",
]
