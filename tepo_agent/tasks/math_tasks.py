"""The math suite: arithmetic questions answered with the calculator tool.

Items that need no tool are common knowledge: one single-digit addition or subtraction
(``a + b`` or ``a - b`` with ``1 <= b <= a <= 9`` for subtraction), which the default model is
taught to answer directly. Every other item needs the calculator: multiplication of two-digit
numbers, a product plus a three-digit number, exact division, or a sum of three-digit numbers
times a digit; training seeds and held-out seeds (``>= EVAL_SEED``) draw these from disjoint
halves of all such expressions. Items that need no tool are every ``1/no_tool_share``-th item (see
``tepo_agent.tasks.base.no_tool_item``). Generated from a seed: the same seed always gives the
same items.
"""

from __future__ import annotations

import random

from tepo_agent.tasks.base import NO_TOOL_SHARE, Task, name_half, no_tool_item, seed_half

_TEMPLATES = (
    "What is {expr}?",
    "Compute {expr}.",
    "Calculate {expr}.",
)


def _format_number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


def _easy(rng: random.Random) -> tuple[str, float, str]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"{a} + {b}", a + b, "add"
    a, b = max(a, b), min(a, b)
    return f"{a} - {b}", a - b, "sub"


def _hard(rng: random.Random, half: int) -> tuple[str, float, str]:
    """An expression that needs the calculator, from the ``half`` of all such expressions its
    seed draws from (training and held-out items never share one)."""
    while True:
        expr, value, kind = _hard_any(rng)
        if name_half(expr) == half:
            return expr, value, kind


def _hard_any(rng: random.Random) -> tuple[str, float, str]:
    kind = rng.choice(("mul", "mul_add", "div", "chain"))
    if kind == "mul":
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        return f"{a} * {b}", a * b, kind
    if kind == "mul_add":
        a, b, c = rng.randint(11, 99), rng.randint(11, 99), rng.randint(100, 999)
        return f"{a} * {b} + {c}", a * b + c, kind
    if kind == "div":
        b = rng.randint(3, 29)
        q = rng.randint(11, 99)
        return f"{b * q} / {b}", q, kind
    a, b, c = rng.randint(101, 999), rng.randint(101, 999), rng.randint(2, 9)
    return f"({a} + {b}) * {c}", (a + b) * c, kind


def math_suite(n: int, *, seed: int = 0, no_tool_share: float = NO_TOOL_SHARE) -> list[Task]:
    """``n`` arithmetic tasks; ``floor(n * no_tool_share)`` of them answerable without a tool."""
    rng = random.Random(f"math:{seed}")
    tasks = []
    for i in range(n):
        easy = no_tool_item(i, no_tool_share)
        expr, value, kind = _easy(rng) if easy else _hard(rng, seed_half(seed))
        question = rng.choice(_TEMPLATES).format(expr=expr)
        tasks.append(
            Task(
                id=f"math-{seed}-{i}",
                suite="math",
                question=question,
                answer=_format_number(value),
                verifier="numeric",
                needs_tool=not easy,
                metadata={"expression": expr, "kind": kind},
            )
        )
    return tasks
