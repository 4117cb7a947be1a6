"""One tool call as the agent records it: the one place a :class:`ToolCallRecord` is built.

The agent (:mod:`tepo_agent.agent.graph`) and the callback recorder for users' own graphs
(:mod:`tepo_agent.agent.recorder`) both record calls through :func:`call_record`, and every
failed call carries an ``error_kind`` (:data:`~tepo_agent.trajectory.ErrorKind`) set here, where
the failure is known, so that the trainer's gate and the statistics count kinds, never wording:

- ``malformed``: the turn's tool-call syntax did not parse (the agent's own message);
- ``unknown_tool``: the model named a tool the agent does not offer;
- ``timeout``: the tool raised a ``TimeoutError`` (:class:`~tepo_agent.errors.ToolTimeoutError`
  among them), or reported one as an error message that starts with
  :data:`~tepo_agent.errors.TIMED_OUT` (a tool with ``handle_tool_error`` hands over text only);
- ``tool_error``: any other failure of the tool.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import ToolMessage

from tepo_agent.agent.state import ToolCallRecord
from tepo_agent.errors import TIMED_OUT
from tepo_agent.trajectory import ErrorKind


def call_record(
    call_id: str,
    name: str | None,
    args: dict[str, Any] | None,
    *,
    latency_s: float,
    result: str | None = None,
    error: str | None = None,
    error_kind: ErrorKind | None = None,
) -> ToolCallRecord:
    """The record of one executed call; ΔH is filled in once the next turn is sampled.

    A failed call (``error`` given) gets ``error_kind`` ``tool_error`` unless another is named.
    """
    if error is not None and error_kind is None:
        error_kind = "tool_error"
    return ToolCallRecord(
        tool_call_id=call_id,
        name=name,
        args=args,
        result=result,
        error=error,
        error_kind=error_kind if error is not None else None,
        latency_s=latency_s,
        delta_entropy=None,
    )


def exception_kind(exc: BaseException) -> ErrorKind:
    """The kind of a call whose tool raised ``exc``."""
    return "timeout" if isinstance(exc, TimeoutError) else "tool_error"


def reported_kind(text: str) -> ErrorKind:
    """The kind of a call whose tool answered with an error message ``text`` (see module doc)."""
    return "timeout" if text.startswith(TIMED_OUT) else "tool_error"


def failed_call(
    call_id: str,
    name: str | None,
    args: dict[str, Any] | None,
    message: str,
    kind: ErrorKind,
    latency_s: float = 0.0,
) -> tuple[ToolMessage, ToolCallRecord]:
    """The error tool message the model reads next turn, and the failed call's record."""
    record = call_record(call_id, name, args, latency_s=latency_s, error=message, error_kind=kind)
    tool_message = ToolMessage(
        content=message, tool_call_id=call_id, name=name or "invalid_tool_call", status="error"
    )
    return tool_message, record


__all__ = ["call_record", "exception_kind", "failed_call", "reported_kind"]
