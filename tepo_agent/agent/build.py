"""Turn a finished conversation of :class:`~tepo_agent.agent.chat_model.TepoChatModel` turns into a
token-exact :class:`~tepo_agent.trajectory.Trajectory`.

Used by :class:`~tepo_agent.agent.TepoAgent` and by the callback recorder for users' own graphs.
The environment tokens of a tool block are taken from what the backend actually received: the
next turn's prompt minus (previous prompt + previous sampled ids). So ``prompt_token_ids`` plus
every turn's tokens is exactly the last prompt plus the last sampled ids. Where a later prompt does
not extend the earlier one (a rerendered, foreign history) the trajectory is marked
``metadata["token_exact"] = False`` and the block's tokens are rendered by the chat format instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from tepo_agent.agent.chat_model import message_to_openai
from tepo_agent.agent.state import ToolCallRecord
from tepo_agent.agent.tool_calls import reported_kind
from tepo_agent.chat.format import ChatFormat
from tepo_agent.entropy import delta_entropy
from tepo_agent.trajectory import Trajectory, TrajectoryStatus, Turn


def _is_own(message: BaseMessage) -> bool:
    return isinstance(message, AIMessage) and "token_ids" in message.response_metadata


def _assistant_turn(message: AIMessage, chat_format: ChatFormat) -> Turn:
    meta = message.response_metadata
    ids = list(meta["token_ids"])
    h = meta.get("turn_entropy")
    return Turn(
        role="assistant",
        token_ids=ids,
        text=chat_format.decode(ids),
        logprobs=list(meta["logprobs"]),
        entropies=list(meta["entropies"]),
        entropy_lower=meta.get("entropy_lower"),
        entropy_upper=meta.get("entropy_upper"),
        entropy_kind=meta.get("entropy_kind"),
        policy_version=meta.get("policy_version"),
        replica=meta.get("replica"),
        finish_reason=meta.get("finish_reason"),
        entropy_mean=None if h is None or math.isnan(h) else float(h),
    )


def _tool_turn(
    message: ToolMessage, record: ToolCallRecord | None, delta: float | None, args: Any
) -> Turn:
    failed = message.status == "error" or (record is not None and record["error"] is not None)
    kind = record.get("error_kind") if record is not None else None
    if failed and kind is None:  # a call described from its messages alone
        kind = reported_kind(message.text)
    return Turn(
        role="tool",
        token_ids=[],
        text=message.text,
        tool_call_id=message.tool_call_id,
        tool_name=record["name"] if record is not None else message.name,
        tool_args=record["args"] if record is not None else args,
        tool_result=None if failed else message.text,
        tool_error=message.text if failed else None,
        error_kind=kind if failed else None,
        tool_latency_s=record["latency_s"] if record is not None else None,
        delta_entropy=delta,
    )


def build_trajectory(
    task: str,
    messages: Sequence[BaseMessage],
    chat_format: ChatFormat,
    tools: Sequence[dict[str, Any]] = (),
    *,
    records: Mapping[str, ToolCallRecord] | None = None,
    status: TrajectoryStatus = "ok",
    answer: str | None = None,
    group_id: str | None = None,
    task_id: str | None = None,
    app_tag: str | None = None,
) -> Trajectory:
    """The trajectory of a conversation whose assistant turns were sampled by ``TepoChatModel``.

    Args:
        task: The query (stored as the trajectory's task).
        messages: The whole conversation, in order.
        chat_format: Renders tool blocks that no later prompt contains, and decodes turn text.
        tools: The OpenAI tool schemas the model was offered.
        records: Tool-call records by ``tool_call_id`` (name, args, latency, error); calls
            without one are described from their messages.
        status, answer, group_id, task_id, app_tag: Copied into the trajectory.
    """
    records = records or {}
    dicts = [message_to_openai(m) for m in messages]
    own = [i for i, m in enumerate(messages) if _is_own(m)]
    header: dict[str, Any] = {
        "task": task,
        "group_id": group_id,
        "answer": answer,
        "status": status,
        "app_tag": app_tag,
        "task_id": task_id,
    }
    if not own:
        prompt = list(chat_format.render(dicts, list(tools), add_generation_prompt=True))
        return Trajectory(prompt_token_ids=prompt, metadata={"token_exact": True}, **header)
    first = messages[own[0]]
    assert isinstance(first, AIMessage)
    trajectory = Trajectory(
        prompt_token_ids=list(first.response_metadata["prompt_token_ids"]), **header
    )
    token_exact = True
    conversation = _Conversation(messages, dicts, chat_format, tools, records)
    for i, end in zip(own, [*own[1:], len(messages)], strict=True):
        turns, exact = conversation.turn_and_block(i, end)
        trajectory.turns.extend(turns)
        token_exact = token_exact and exact
    trajectory.metadata["token_exact"] = token_exact and all(
        messages[i].response_metadata.get("prompt_render") != "rerendered" for i in own
    )
    return trajectory


@dataclass(frozen=True)
class _Conversation:
    """What :func:`build_trajectory` reads each assistant turn and its tool block from."""

    messages: Sequence[BaseMessage]
    dicts: list[dict[str, Any]]
    chat_format: ChatFormat
    tools: Sequence[dict[str, Any]]
    records: Mapping[str, ToolCallRecord]

    def turn_and_block(self, i: int, end: int) -> tuple[list[Turn], bool]:
        """Assistant turn ``i`` and the tool turns of ``messages[i + 1 : end]``, and whether
        the block's tokens were taken from the next prompt (token-exact)."""
        message = self.messages[i]
        assert isinstance(message, AIMessage)
        turn = _assistant_turn(message, self.chat_format)
        block = [m for m in self.messages[i + 1 : end] if isinstance(m, ToolMessage)]
        if not block:
            return [turn], True
        env, delta, exact = self.environment(i, end, turn)
        args_by_id = {c["id"]: c["args"] for c in message.tool_calls}
        tool_turns = [
            _tool_turn(
                tool_msg,
                self.records.get(tool_msg.tool_call_id),
                delta,
                args_by_id.get(tool_msg.tool_call_id),
            )
            for tool_msg in block
        ]
        tool_turns[0].token_ids = env
        return [turn, *tool_turns], exact

    def environment(self, i: int, end: int, turn: Turn) -> tuple[list[int], float | None, bool]:
        """The environment tokens after turn ``i`` (tool results + next generation prompt),
        the block's ΔH, and whether the tokens are the next prompt's own."""
        if end == len(self.messages):  # no turn followed: render the block, ΔH unknown
            return self.render_block(i, end, turn), None, True
        following = self.messages[end].response_metadata
        delta = delta_entropy(turn.entropy_mean, following.get("turn_entropy"))
        prefix = list(self.messages[i].response_metadata["prompt_token_ids"]) + turn.token_ids
        next_prompt = list(following["prompt_token_ids"])
        if next_prompt[: len(prefix)] == prefix:
            return next_prompt[len(prefix) :], delta, True
        return self.render_block(i, end, turn), delta, False

    def render_block(self, turn_index: int, end: int, turn: Turn) -> list[int]:
        chat_format = self.chat_format
        ended = bool(turn.token_ids) and turn.token_ids[-1] == chat_format.end_of_turn_id
        tool_dicts = [d for d in self.dicts[turn_index + 1 : end] if d["role"] == "tool"]
        return list(
            chat_format.environment_tokens(
                self.dicts[: turn_index + 1],
                tool_dicts,
                list(self.tools),
                sampled_end_of_turn=ended,
            )
        )


__all__ = ["build_trajectory"]
