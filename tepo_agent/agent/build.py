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
    if not own:
        prompt = list(chat_format.render(dicts, list(tools), add_generation_prompt=True))
        return Trajectory(
            task=task,
            prompt_token_ids=prompt,
            group_id=group_id,
            answer=answer,
            status=status,
            app_tag=app_tag,
            task_id=task_id,
            metadata={"token_exact": True},
        )
    first = messages[own[0]]
    assert isinstance(first, AIMessage)
    trajectory = Trajectory(
        task=task,
        prompt_token_ids=list(first.response_metadata["prompt_token_ids"]),
        group_id=group_id,
        answer=answer,
        status=status,
        app_tag=app_tag,
        task_id=task_id,
    )
    token_exact = True
    for n, i in enumerate(own):
        turn_msg = messages[i]
        assert isinstance(turn_msg, AIMessage)
        turn = _assistant_turn(turn_msg, chat_format)
        trajectory.turns.append(turn)
        end = own[n + 1] if n + 1 < len(own) else len(messages)
        block = [m for m in messages[i + 1 : end] if isinstance(m, ToolMessage)]
        if not block:
            continue
        meta = turn_msg.response_metadata
        prefix = list(meta["prompt_token_ids"]) + turn.token_ids
        delta: float | None = None
        env: list[int]
        if end < len(messages):
            nxt = messages[end].response_metadata
            next_prompt = list(nxt["prompt_token_ids"])
            delta = delta_entropy(turn.entropy_mean, nxt.get("turn_entropy"))
            if next_prompt[: len(prefix)] == prefix:
                env = next_prompt[len(prefix) :]
            else:
                token_exact = False
                env = _render_block(chat_format, dicts, i, end, tools, turn)
        else:
            env = _render_block(chat_format, dicts, i, end, tools, turn)
        args_by_id = {c["id"]: c["args"] for c in turn_msg.tool_calls}
        for k, tool_msg in enumerate(block):
            tool_turn = _tool_turn(
                tool_msg,
                records.get(tool_msg.tool_call_id),
                delta,
                args_by_id.get(tool_msg.tool_call_id),
            )
            if k == 0:
                tool_turn.token_ids = env
            trajectory.turns.append(tool_turn)
    trajectory.metadata["token_exact"] = token_exact and all(
        messages[i].response_metadata.get("prompt_render") != "rerendered" for i in own
    )
    return trajectory


def _render_block(
    chat_format: ChatFormat,
    dicts: list[dict[str, Any]],
    turn_index: int,
    end: int,
    tools: Sequence[dict[str, Any]],
    turn: Turn,
) -> list[int]:
    ended = bool(turn.token_ids) and turn.token_ids[-1] == chat_format.end_of_turn_id
    tool_dicts = [d for d in dicts[turn_index + 1 : end] if d["role"] == "tool"]
    return list(
        chat_format.environment_tokens(
            dicts[: turn_index + 1], tool_dicts, list(tools), sampled_end_of_turn=ended
        )
    )


__all__ = ["build_trajectory"]
