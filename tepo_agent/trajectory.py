"""The trajectory record: what one agent run produced, token-exact.

Produced by the agent (``tepo_agent.agent``), persisted by the store (``tepo_agent.store``), read
by the trainer. Layout (docs/architecture.md, invariant 4)::

    prompt_token_ids | t_0 (assistant) | env_1 (tool) | t_1 (assistant) | ... | t_K (assistant)

- ``prompt_token_ids`` is the rendered system + user messages + the generation prompt.
- An assistant turn's ``token_ids`` are exactly the ids the backend sampled (never re-tokenized),
  with their behaviour logprobs and entropies.
- A tool turn is one tool call. The environment tokens that follow an assistant turn (the rendered
  tool results plus the next generation prompt) are stored on the *first* tool turn of that block;
  further tool turns of the same block (parallel calls) carry empty ``token_ids``. Concatenating
  ``prompt_token_ids`` and every turn's ``token_ids`` in order therefore gives exactly the token
  sequence the model saw.
- ``delta_entropy`` on a tool turn is ΔH_k = H(t_k) − H(t_{k−1}) for the call it records; it is
  None until the following assistant turn has been generated (and stays None if none was).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from tepo_agent.backends.base import EntropyKind

TurnRole = Literal["assistant", "tool"]
TrajectoryStatus = Literal["ok", "no_answer", "max_tool_calls", "max_tokens", "error"]
"""Why a run ended: ``ok`` an answer; ``no_answer`` the last turn ended the run with no text
(or only tool markup); ``max_tool_calls``/``max_tokens`` a limit; ``error`` a failure."""
ErrorKind = Literal["malformed", "unknown_tool", "tool_error", "timeout"]
"""Why a tool call failed: ``malformed`` (the turn's tool-call syntax did not parse),
``unknown_tool`` (a name the agent does not offer), ``tool_error`` (the tool refused or raised),
``timeout`` (the tool did not finish in time). A call that succeeded has ``error_kind`` None."""
ERROR_KINDS: tuple[ErrorKind, ...] = ("malformed", "unknown_tool", "tool_error", "timeout")
FORMAT_ERROR_KINDS: tuple[ErrorKind, ...] = ("malformed", "unknown_tool")
"""The kinds that are the model's fault in writing the call (the gate's format errors)."""

_TIMEOUT_TEXTS = ("error: TimeoutError", "error: timeout", "error: timed out")


def error_kind_from_text(error: str | None) -> ErrorKind | None:
    """The kind of a call's error message (None for a call that succeeded): for calls recorded
    before the ``error_kind`` field existed, whose kind only their text tells."""
    if error is None:
        return None
    if error.startswith("error: malformed tool call"):
        return "malformed"
    if error.startswith("error: unknown tool"):
        return "unknown_tool"
    if error.startswith(_TIMEOUT_TEXTS):
        return "timeout"
    return "tool_error"


def new_id() -> str:
    """A fresh trajectory or group id (32 hex characters)."""
    return uuid.uuid4().hex


@dataclass
class Turn:
    """One assistant turn or one tool call inside a trajectory."""

    role: TurnRole
    token_ids: list[int]
    text: str = ""
    # assistant turns
    logprobs: list[float] | None = None
    entropies: list[float] | None = None
    entropy_lower: list[float] | None = None
    entropy_upper: list[float] | None = None
    entropy_kind: EntropyKind | None = None
    policy_version: int | None = None
    finish_reason: str | None = None
    entropy_mean: float | None = None  # H(t_k) as configured (mean, or first-N window)
    replica: str | None = None  # the serving replica that sampled it (HttpBackend's base URL)
    # tool turns
    tool_call_id: str | None = None
    tool_name: str | None = None
    tool_args: dict[str, Any] | None = None
    tool_result: str | None = None
    tool_error: str | None = None
    error_kind: ErrorKind | None = None  # why the call failed (None: it succeeded)
    tool_latency_s: float | None = None
    delta_entropy: float | None = None  # ΔH_k of this call

    @property
    def is_assistant(self) -> bool:
        return self.role == "assistant"


@dataclass
class Trajectory:
    """One agent run: the query, every turn token-exact, the answer and (later) its score."""

    task: str
    prompt_token_ids: list[int]
    turns: list[Turn] = field(default_factory=list)
    id: str = field(default_factory=new_id)
    group_id: str | None = None
    answer: str | None = None
    status: TrajectoryStatus = "ok"
    score: float | None = None
    app_tag: str | None = None
    task_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float | None = None

    @property
    def policy_version(self) -> int | None:
        """The version that sampled the first assistant turn (every turn also records its own)."""
        for turn in self.turns:
            if turn.role == "assistant" and turn.policy_version is not None:
                return turn.policy_version
        return None

    def full_token_ids(self) -> list[int]:
        """The whole sequence the model saw: prompt, then every turn's tokens in order."""
        ids = list(self.prompt_token_ids)
        for turn in self.turns:
            ids.extend(turn.token_ids)
        return ids

    def assistant_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "assistant"]

    def tool_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "tool"]
