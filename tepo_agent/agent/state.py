"""The agent's configuration, its LangGraph state, and the pure routers between its nodes.

The graph (built in :mod:`tepo_agent.agent.graph`) is::

    START → model ─┬─ tools → model → …      (the last turn asked for tools, within limits)
                   └─ END                     (an answer, or a limit was reached)

State is a ``TypedDict`` whose list fields have ``Annotated`` reducers, so an application that
streams the graph's updates sees every turn's entropy H(t_k) as soon as it is sampled and every
tool call's ΔH_k as soon as the turn after it is sampled.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, ToolMessage
from langgraph.graph.message import add_messages

from tepo_agent.errors import ConfigError
from tepo_agent.model.default import DEFAULT_SYSTEM_PROMPT
from tepo_agent.trajectory import ErrorKind, TrajectoryStatus

_TOOL_MARKUP = re.compile(r"</?tool_(?:call|response)>")
"""Tool markup left in a final turn (a stray ``</tool_call>``): not an answer."""


@dataclass(frozen=True)
class AgentConfig:
    """How one agent run samples and when it stops.

    Attributes:
        max_tool_calls: Most tool calls one run may execute. A turn that asks for more ends the
            run with status ``max_tool_calls`` (its calls are not executed).
        max_new_tokens: Most tokens sampled per assistant turn.
        max_total_tokens: Most tokens in the whole sequence (prompt, turns, tool results). A turn
            is cut to what is left; when nothing is left the run ends with status ``max_tokens``.
        temperature: Sampling temperature (1.0 samples the raw distribution, whose surprisal is
            an unbiased entropy estimate over HTTP backends; 0 is greedy).
        top_p: Nucleus mass in (0, 1].
        top_k: Keep the k most likely tokens; -1 disables it.
        seed: Base sampler seed; each sample of a group and each turn derive their own from it.
            None draws fresh randomness.
        entropy_window: H(t_k) over the first N tokens of each turn; None uses the whole turn.
        system_prompt: The system message of every run; None leaves it to the chat template.
    """

    max_tool_calls: int = 8
    max_new_tokens: int = 256
    max_total_tokens: int = 4096
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    entropy_window: int | None = None
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        if self.max_tool_calls < 0:
            raise ConfigError(f"max_tool_calls must be >= 0, got {self.max_tool_calls}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_total_tokens < 2:
            raise ConfigError(f"max_total_tokens must be >= 2, got {self.max_total_tokens}")
        if not self.temperature >= 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ConfigError(f"top_k must be -1 (disabled) or >= 0, got {self.top_k}")
        if self.entropy_window is not None and self.entropy_window < 1:
            raise ConfigError(f"entropy_window must be None or >= 1, got {self.entropy_window}")

    def turn_seed(self, sample: int, turn: int) -> int | None:
        """The sampler seed of turn ``turn`` of group sample ``sample`` (None if unseeded)."""
        if self.seed is None:
            return None
        return (self.seed * 1_000_003 + sample * 10_007 + turn) % (2**63)


class ToolCallRecord(TypedDict):
    """One executed tool call, live in the graph state.

    ``delta_entropy`` is ΔH_k = H(t_k) − H(t_{k−1}); it is None while the turn after the call
    has not been sampled yet (and stays None if the run ended before it). ``error_kind`` says why
    a failed call failed (:data:`~tepo_agent.trajectory.ErrorKind`; None when it succeeded).
    Build one with :func:`tepo_agent.agent.tool_calls.call_record`.
    """

    tool_call_id: str
    name: str | None
    args: dict[str, Any] | None
    result: str | None
    error: str | None
    error_kind: ErrorKind | None
    latency_s: float
    delta_entropy: float | None


class AgentState(TypedDict, total=False):
    """The graph state of one run.

    Attributes:
        messages: The conversation (system, user, assistant turns with their token metadata,
            tool results).
        turn_entropies: H(t_k) of every assistant turn so far.
        tool_calls: Finished tool-call records, with ΔH_k filled in.
        pending_calls: The last block's calls, waiting for the next turn's entropy (overwritten).
        prompt_tokens: Length of the last prompt sent to the backend.
        generated_tokens: Tokens sampled so far in this run.
        total_tokens: Length of the whole sequence so far (last prompt + its sampled turn).
        sample: Index of this run inside its group (derives the sampler seeds).
        status: Why the run ended (set by ``model`` on the run's last step).
        answer: The final answer's text (set with ``status``).
    """

    messages: Annotated[list[AnyMessage], add_messages]
    turn_entropies: Annotated[list[float], operator.add]
    tool_calls: Annotated[list[ToolCallRecord], operator.add]
    pending_calls: list[ToolCallRecord]
    prompt_tokens: int
    generated_tokens: Annotated[int, operator.add]
    total_tokens: int
    sample: int
    status: TrajectoryStatus | None
    answer: str | None


def calls_requested(message: AIMessage) -> int:
    """Tool calls a turn asks for, malformed ones included (each costs a round trip)."""
    return len(message.tool_calls) + len(message.invalid_tool_calls)


def calls_executed(state: AgentState) -> int:
    return sum(isinstance(m, ToolMessage) for m in state.get("messages", []))


def route_after_model(state: AgentState, limits: AgentConfig) -> Literal["tools", "finish"]:
    """After ``state``'s last turn: execute the requested tools, or finish the run (an answer,
    or a limit was reached)."""
    if state.get("status") is not None:
        return "finish"
    last = state["messages"][-1]
    if not isinstance(last, AIMessage) or calls_requested(last) == 0:
        return "finish"
    if calls_executed(state) + calls_requested(last) > limits.max_tool_calls:
        return "finish"
    if state.get("total_tokens", 0) >= limits.max_total_tokens:
        return "finish"
    return "tools"


def final_status(state: AgentState, limits: AgentConfig) -> TrajectoryStatus:
    """Why a run that :func:`route_after_model` finishes ended."""
    status = state.get("status")
    if status is not None:
        return status
    last = state["messages"][-1]
    if not isinstance(last, AIMessage):
        return "error"
    if calls_requested(last) > 0:
        if calls_executed(state) + calls_requested(last) > limits.max_tool_calls:
            return "max_tool_calls"
        return "max_tokens"
    if last.response_metadata.get("finish_reason") == "length":
        return "max_tokens"
    if not _TOOL_MARKUP.sub("", last.text).strip():
        return "no_answer"
    return "ok"


__all__ = [
    "AgentConfig",
    "AgentState",
    "ToolCallRecord",
    "calls_executed",
    "calls_requested",
    "final_status",
    "route_after_model",
]
