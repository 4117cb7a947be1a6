"""Task records: a question, its reference answer and the verifier that scores answers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

from tepo_agent.tasks.verifiers import VerifierName, verify

SuiteName = Literal["math", "knowledge", "deep_search"]

NO_TOOL_SHARE = 0.25
"""Share of every suite's items that need no tool (fixed before any training; docs/world.md)."""


EVAL_SEED = 1000
"""World and item seeds at or above this are held out: training never uses them."""


def name_half(text: str) -> int:
    """0 or 1: which half of the name space ``text`` is in. Training worlds draw names (and
    arithmetic that needs a tool) from half 0, held-out worlds from half 1, so nothing a
    held-out item needs a tool for can occur in training."""
    return hashlib.sha256(text.encode()).digest()[0] & 1


def seed_half(seed: int) -> int:
    """The half of the name space a seed's world and items draw from (1: held out)."""
    return 1 if seed >= EVAL_SEED else 0


def no_tool_item(index: int, share: float = NO_TOOL_SHARE) -> bool:
    """Whether item ``index`` of a suite is a no-tool item: every ``1/share``-th one, so exactly
    ``floor(n * share)`` of the first ``n`` items are, whatever ``n``."""
    return int((index + 1) * share + 1e-9) > int(index * share + 1e-9)


@dataclass(frozen=True)
class Task:
    """One item of a task suite.

    Attributes:
        id: Stable id (suite, seed and index), so evaluations are comparable across runs.
        suite: Which suite generated it.
        question: What the user asks.
        answer: The reference answer.
        verifier: How an answer is scored (see ``tepo_agent.tasks.verifiers``).
        needs_tool: Whether a tool is needed: False for common-knowledge items (single-digit
            arithmetic, facts about the fixed common entities) the default model is taught.
        metadata: Generator details (operands, hops, entities) for analysis.
    """

    id: str
    suite: SuiteName
    question: str
    answer: str
    verifier: VerifierName
    needs_tool: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)

    def score(self, prediction: str | None) -> float:
        """Score a final answer in [0, 1]."""
        return verify(self.verifier, prediction, self.answer)
