"""The math suite: arithmetic questions answered with the calculator tool.

Easy items (one small addition or subtraction) can be answered without a tool; harder ones
(multiplication of larger numbers, several operations, division) need the calculator. Generated
from a seed, so the same seed always gives the same items.
"""

from __future__ import annotations

import random

from tepo_agent.tasks.base import Task

_TEMPLATES = (
    "What is {expr}?",
    "Compute {expr}.",
    "Calculate {expr}.",
)


def _format_number(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.6g}"


def _easy(rng: random.Random) -> tuple[str, float]:
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"{a} + {b}", a + b
    a, b = max(a, b), min(a, b)
    return f"{a} - {b}", a - b


def _hard(rng: random.Random) -> tuple[str, float]:
    kind = rng.choice(("mul", "mul_add", "div", "chain"))
    if kind == "mul":
        a, b = rng.randint(12, 99), rng.randint(12, 99)
        return f"{a} * {b}", a * b
    if kind == "mul_add":
        a, b, c = rng.randint(11, 99), rng.randint(11, 99), rng.randint(100, 999)
        return f"{a} * {b} + {c}", a * b + c
    if kind == "div":
        b = rng.randint(3, 29)
        q = rng.randint(11, 99)
        return f"{b * q} / {b}", q
    a, b, c = rng.randint(101, 999), rng.randint(101, 999), rng.randint(2, 9)
    return f"({a} + {b}) * {c}", (a + b) * c


def math_suite(n: int, *, seed: int = 0, easy_fraction: float = 0.25) -> list[Task]:
    """``n`` arithmetic tasks; about ``easy_fraction`` of them answerable without a tool."""
    rng = random.Random(f"math:{seed}")
    tasks = []
    for i in range(n):
        easy = rng.random() < easy_fraction
        expr, value = _easy(rng) if easy else _hard(rng)
        question = rng.choice(_TEMPLATES).format(expr=expr)
        tasks.append(
            Task(
                id=f"math-{seed}-{i}",
                suite="math",
                question=question,
                answer=_format_number(value),
                verifier="numeric",
                needs_tool=not easy,
                metadata={"expression": expr},
            )
        )
    return tasks
