"""A recorded conversation (:class:`~tepo_agent.server.sessions.LiveTrajectory`) as a trajectory.

The server's sampled turns carry what :class:`~tepo_agent.agent.chat_model.TepoChatModel` puts in
``response_metadata`` (sampled ids, behaviour logprobs, exact entropies, the prompt ids, the policy
version), so the conversation is turned into LangChain messages and handed to the agent's own
:func:`~tepo_agent.agent.build.build_trajectory`: one rule for token-exact trajectories, tool
results as environment tokens (masked by the loss), H(t_k) per turn and ΔH_k per tool call.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from tepo_agent.agent.build import build_trajectory
from tepo_agent.chat.format import ChatFormat
from tepo_agent.entropy import turn_entropy
from tepo_agent.server.canonical import Canon
from tepo_agent.server.sessions import LiveTrajectory, SampledTurn
from tepo_agent.trajectory import Trajectory, TrajectoryStatus


def _calls(message: Canon) -> list[dict[str, Any]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        args = function.get("arguments")
        calls.append(
            {
                "name": str(function.get("name") or ""),
                "args": args if isinstance(args, dict) else {},
                "id": call.get("id"),
            }
        )
    return calls


def _metadata(turn: SampledTurn) -> dict[str, Any]:
    gen = turn.generation
    entropies = list(gen.entropies)
    meta: dict[str, Any] = {
        "token_ids": list(gen.token_ids),
        "logprobs": list(gen.logprobs),
        "entropies": entropies,
        "entropy_kind": gen.entropy_kind,
        "turn_entropy": turn_entropy(entropies) if entropies else None,
        "policy_version": gen.policy_version,
        "prompt_token_ids": list(gen.prompt_token_ids),
        "finish_reason": gen.finish_reason,
        "prompt_render": turn.prompt_render,
    }
    if gen.entropy_lower is not None:
        meta["entropy_lower"] = list(gen.entropy_lower)
    if gen.entropy_upper is not None:
        meta["entropy_upper"] = list(gen.entropy_upper)
    return meta


def langchain_message(message: Canon, turn: SampledTurn | None) -> BaseMessage:
    """One canonical message as LangChain's; a turn this trajectory sampled carries its ids."""
    role, content = message["role"], message["content"]
    if role == "assistant":
        meta = _metadata(turn) if turn is not None else {}
        return AIMessage(content=content, tool_calls=_calls(message), response_metadata=meta)
    if role == "tool":
        return ToolMessage(
            content=content,
            tool_call_id=str(message.get("tool_call_id") or ""),
            name=message.get("name"),
        )
    if role == "system" or role == "developer":
        return SystemMessage(content=content)
    return HumanMessage(content=content)


def final_status(message: Canon, turn: SampledTurn) -> TrajectoryStatus:
    """Why a recorded trajectory ended, from its last sampled turn."""
    if message.get("tool_calls"):
        return "error"  # the client never sent the results of the calls it was given
    if turn.generation.finish_reason == "length":
        return "max_tokens"
    return "ok" if message["content"].strip() else "no_answer"


def to_trajectory(live: LiveTrajectory, chat_format: ChatFormat) -> Trajectory:
    """The token-exact trajectory of ``live`` (which has at least one sampled turn)."""
    own = sorted(live.turns)
    first, last = own[0], own[-1]
    users = [m["content"] for m in live.messages[:first] if m["role"] == "user"]
    messages = [langchain_message(m, live.turns.get(i)) for i, m in enumerate(live.messages)]
    final = live.messages[last]
    status = final_status(final, live.turns[last])
    trajectory = build_trajectory(
        users[-1] if users else "",
        messages[: last + 1],
        chat_format,
        live.tools,
        status=status,
        answer=final["content"] or None if status != "error" else None,
        app_tag=live.owner,
    )
    trajectory.id = live.id
    trajectory.created_at = time.time()
    trajectory.metadata.update(
        recorded_by="tepo-agent serve --record",
        session_id=live.session_id,
        response_ids=live.response_ids(),
        started=live.started,
        ended=live.ended,
    )
    return trajectory


__all__ = ["final_status", "langchain_message", "to_trajectory"]
