"""Task records: a question, its reference answer and the verifier that scores answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from tepo_agent.tasks.verifiers import VerifierName, verify

SuiteName = Literal["math", "knowledge", "deep_search"]


@dataclass(frozen=True)
class Task:
    """One item of a task suite.

    Attributes:
        id: Stable id (suite, seed and index), so evaluations are comparable across runs.
        suite: Which suite generated it.
        question: What the user asks.
        answer: The reference answer.
        verifier: How an answer is scored (see ``tepo_agent.tasks.verifiers``).
        needs_tool: Whether a tool is needed to answer reliably (easy math items are not).
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
