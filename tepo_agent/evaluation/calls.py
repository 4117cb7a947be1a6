"""What one tool call was, for an evaluation: its error kind, ΔH and whether its result was used.

Pure functions over the agent's :class:`~tepo_agent.agent_state.ToolCallRecord` s:

- :func:`error_kind` sorts a failed call: ``malformed`` (the turn's tool-call syntax did not
  parse) and ``unknown_tool`` (a name the agent does not have) are *format errors*, the model's
  fault in writing the call; ``tool_error`` is a call the tool refused (arguments that do not fit
  its schema, a division by zero) and ``timeout`` one it did not answer in time. The kinds are
  the project's ``error_kind`` values: a record that carries ``error_kind`` is taken at its word;
  for one that does not, it is derived here, in this one function, from the error text.
- :func:`result_used` decides whether a call's result was *used*: some salient piece of it (a
  number, or a capitalised name the question did not already contain) reappears in a later
  call's arguments or in the final answer. Multi-hop searches use a result by searching for the
  name it revealed; a calculator call is used when its number is the answer.

The paper's pilot statistic pairs the two views of a call: its entropy change ΔH_k < 0 and
whether it was a *good call* (the run is correct and the call's result was used).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tepo_agent.agent.state import ToolCallRecord
from tepo_agent.trajectory import ERROR_KINDS, FORMAT_ERROR_KINDS, ErrorKind
from tepo_agent.trajectory import error_kind_from_text as error_kind

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_NAME = re.compile(r"\b[A-Z][a-z]{2,}(?:\s+[A-Z][a-z]{2,})*")
# capitalised words that start sentences in tool results and answers, never names
_NOT_NAMES = frozenset({"The", "Its", "This", "That", "There", "Answer", "Error", "Result"})


def salient_pieces(result: str, question: str) -> set[str]:
    """Numbers and capitalised names in ``result`` that ``question`` does not already contain."""
    pieces = {m.group(0) for m in _NUMBER.finditer(result)}
    for m in _NAME.finditer(result):
        words = [w for w in m.group(0).split() if w not in _NOT_NAMES]
        if words:
            pieces.add(" ".join(words))
            pieces.update(words)
    return {p for p in pieces if p not in question}


def _canonical_numbers(text: str) -> set[str]:
    out = set()
    for m in _NUMBER.finditer(text.replace(",", "")):
        value = float(m.group(0))
        out.add(str(int(value)) if value.is_integer() else repr(value))
    return out


def result_used(result: str | None, later: Sequence[str], question: str) -> bool:
    """Whether a salient piece of ``result`` reappears in ``later`` texts (see module docstring).

    ``later`` holds the arguments of every later call (as text) and the final answer.
    """
    if not result:
        return False
    pieces = salient_pieces(result, question)
    if not pieces:
        return False
    numbers = _canonical_numbers(" ".join(p for p in pieces if _NUMBER.fullmatch(p)))
    names = {p for p in pieces if not _NUMBER.fullmatch(p)}
    for text in later:
        if numbers & _canonical_numbers(text):
            return True
        if any(re.search(rf"\b{re.escape(name)}\b", text, re.IGNORECASE) for name in names):
            return True
    return False


@dataclass(frozen=True)
class CallOutcome:
    """One executed tool call as an evaluation sees it.

    Attributes:
        name: The tool's name (None when the call did not parse).
        error: Its error kind (None when the tool answered).
        delta_entropy: ΔH_k (None when no turn followed the call).
        used: Whether its result reappears later in the run (see :func:`result_used`).
    """

    name: str | None
    error: ErrorKind | None
    delta_entropy: float | None
    used: bool

    @property
    def reducing(self) -> bool:
        """ΔH_k < 0 (an unknown ΔH is not reducing)."""
        return self.delta_entropy is not None and self.delta_entropy < 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def call_outcomes(
    records: Sequence[ToolCallRecord], answer: str | None, question: str
) -> tuple[CallOutcome, ...]:
    """The outcomes of a run's calls, in order."""
    args_text = [json.dumps(r["args"] or {}, ensure_ascii=False) for r in records]
    outcomes = []
    for k, record in enumerate(records):
        later = [*args_text[k + 1 :], answer or ""]
        outcomes.append(
            CallOutcome(
                name=record["name"],
                error=record.get("error_kind") or error_kind(record["error"]),  # type: ignore[typeddict-item]
                delta_entropy=record["delta_entropy"],
                used=record["error"] is None and result_used(record["result"], later, question),
            )
        )
    return tuple(outcomes)


__all__ = [
    "ERROR_KINDS",
    "FORMAT_ERROR_KINDS",
    "CallOutcome",
    "ErrorKind",
    "call_outcomes",
    "error_kind",
    "result_used",
    "salient_pieces",
]
