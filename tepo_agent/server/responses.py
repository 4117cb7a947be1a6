"""Response bodies of ``tepo-agent serve`` in vLLM 0.33's format, plus the exact-entropy extension.

Every choice carries two fields vLLM does not have (its schemas allow additional properties):
``entropies``, the EXACT full-vocabulary entropy in nats of the raw distribution each output
token was drawn from, and ``entropy_kind: "exact"``. vLLM's own extensions are filled when asked:
``token_ids`` (+ ``prompt_token_ids``), ``"token_id:N"`` token labels, ``weight_versions``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from tepo_agent.backends.base import Generation
from tepo_agent.server.protocol import ChatCompletionRequest, CompletionRequest
from tepo_agent.server.topk import TopK

Decode = Callable[[list[int]], str]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def token_label(token_id: int, decode: Decode, as_token_ids: bool) -> str:
    """How a token is written in logprobs: ``"token_id:N"`` or its decoded text."""
    return f"token_id:{token_id}" if as_token_ids else decode([token_id])


def weight_versions(gen: Generation) -> list[dict[str, Any]]:
    """vLLM's ``weight_versions``: one span, the server never swaps inside a request."""
    return [{"version": str(gen.policy_version), "start": 0, "end": len(gen.token_ids)}]


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_fields(gen: Generation) -> dict[str, Any]:
    """``finish_reason`` and vLLM's ``stop_reason`` (the stop token id; None for EOS/length)."""
    return {"finish_reason": gen.finish_reason, "stop_reason": None}


def completion_logprobs(
    gen: Generation, topk: TopK | None, decode: Decode, as_token_ids: bool
) -> dict[str, Any]:
    """``choices[i].logprobs`` of a completion (``logprobs=k``).

    ``top_logprobs[t]`` holds the k most likely tokens plus the sampled one when it is not among
    them, as vLLM does (with ``logprobs=0``: the sampled token alone).
    """
    labels = [token_label(t, decode, as_token_ids) for t in gen.token_ids]
    top: list[dict[str, float]] = []
    for t, (token, lp) in enumerate(zip(gen.token_ids, gen.logprobs, strict=True)):
        entry = {token_label(a, decode, as_token_ids): v for a, v in (topk[t] if topk else [])}
        entry.setdefault(labels[t], lp)
        top.append(entry)
        del token
    offsets: list[int] = []
    position = 0
    for label in labels:
        offsets.append(position)
        position += len(label)
    return {
        "tokens": labels,
        "token_logprobs": list(gen.logprobs),
        "top_logprobs": top,
        "text_offset": offsets,
    }


def chat_logprobs(
    gen: Generation, topk: TopK | None, decode: Decode, as_token_ids: bool
) -> dict[str, Any]:
    """``choices[i].logprobs`` of a chat completion (``logprobs=true, top_logprobs=k``)."""
    content = []
    for t, (token, lp) in enumerate(zip(gen.token_ids, gen.logprobs, strict=True)):
        label = token_label(token, decode, as_token_ids)
        alternatives = []
        for alt, value in topk[t] if topk else []:
            alt_label = token_label(alt, decode, as_token_ids)
            alternatives.append(
                {"token": alt_label, "logprob": value, "bytes": list(alt_label.encode())}
            )
        content.append(
            {
                "token": label,
                "logprob": lp,
                "bytes": list(label.encode()),
                "top_logprobs": alternatives,
            }
        )
    return {"content": content}


def extension_fields(
    gen: Generation, *, return_token_ids: bool, return_weight_versions: bool
) -> dict[str, Any]:
    """The per-choice fields beyond OpenAI's: exact entropies, token ids, weight versions."""
    fields: dict[str, Any] = {"entropies": list(gen.entropies), "entropy_kind": gen.entropy_kind}
    if return_token_ids:
        fields["token_ids"] = list(gen.token_ids)
    if return_weight_versions:
        fields["weight_versions"] = weight_versions(gen)
    return fields


def tool_call_objects(tool_calls: Any) -> list[dict[str, Any]]:
    """OpenAI ``message.tool_calls`` from parsed ``ToolCall(id, name, arguments)`` records."""
    import json

    return [
        {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for call in tool_calls
    ]


def text_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages with list-of-parts ``content`` flattened to its text parts."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            message = {**message, "content": "".join(texts)}
        out.append(message)
    return out


def completion_chunks(
    head: dict[str, Any],
    choices: list[dict[str, Any]],
    used: dict[str, int],
    req: CompletionRequest,
) -> list[dict[str, Any]]:
    """vLLM's stream of a completion: each choice, then its finish, then (optionally) usage."""
    chunks = []
    for choice in choices:
        finish = {k: choice.pop(k) for k in ("finish_reason", "stop_reason")}
        versions = choice.pop("weight_versions", None)
        chunks.append({**head, "object": "text_completion", "choices": [choice]})
        last = {"index": choice["index"], "text": "", **finish}
        if versions is not None:
            last["weight_versions"] = versions
        chunks.append({**head, "object": "text_completion", "choices": [last]})
    if req.stream_options and req.stream_options.include_usage:
        chunks.append({**head, "object": "text_completion", "choices": [], "usage": used})
    return chunks


def chat_chunks(
    head: dict[str, Any],
    choices: list[dict[str, Any]],
    used: dict[str, int],
    req: ChatCompletionRequest,
    prompt_ids: list[int],
) -> list[dict[str, Any]]:
    """vLLM's chat stream for finished choices: role+content, tool calls, then the finish."""
    base = {**head, "object": "chat.completion.chunk"}
    chunks: list[dict[str, Any]] = []
    for choice in choices:
        message = choice["message"]
        content = {
            "index": choice["index"],
            "delta": {"role": "assistant", "content": message["content"] or ""},
        }
        for key in ("logprobs", "entropies", "entropy_kind", "token_ids"):
            if key in choice:
                content[key] = choice[key]
        first = {**base, "choices": [content]}
        if req.return_token_ids and not chunks:
            first["prompt_token_ids"] = prompt_ids
        chunks.append(first)
        if message["tool_calls"]:
            deltas = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
            chunks.append(
                {**base, "choices": [{"index": choice["index"], "delta": {"tool_calls": deltas}}]}
            )
        last: dict[str, Any] = {
            "index": choice["index"],
            "delta": {},
            "finish_reason": choice["finish_reason"],
            "stop_reason": choice["stop_reason"],
        }
        if "weight_versions" in choice:
            last["weight_versions"] = choice["weight_versions"]
        chunks.append({**base, "choices": [last]})
    if req.stream_options and req.stream_options.include_usage:
        chunks.append({**base, "choices": [], "usage": used})
    return chunks


__all__ = [
    "chat_chunks",
    "chat_logprobs",
    "completion_chunks",
    "completion_logprobs",
    "extension_fields",
    "finish_fields",
    "new_id",
    "now",
    "text_messages",
    "token_label",
    "tool_call_objects",
    "usage",
    "weight_versions",
]
