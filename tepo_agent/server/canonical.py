"""Chat messages in the one spelling histories are compared in (``serve --record``).

Clients send back the assistant turns they were given in their own spelling: the OpenAI client
adds ``refusal``/``annotations`` and None values, sends tool-call arguments as a JSON string and
content as None or a list of parts. :func:`canonical` keeps what the conversation means, so a
history can be compared, field for field, with what the server returned.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

Canon = dict[str, Any]
"""A message in the form histories are compared in (see :func:`canonical`)."""


def canonical(message: dict[str, Any]) -> Canon:
    """``message`` with only what a history comparison needs, in one spelling.

    Content parts are joined, None content is ``""``, tool-call arguments are parsed from their
    JSON string, and fields a client adds (``refusal``, ``annotations``, None values) are dropped.
    """
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    out: Canon = {"role": message.get("role"), "content": content or ""}
    calls = message.get("tool_calls")
    if calls:
        out["tool_calls"] = [_canonical_call(call) for call in calls]
    for key in ("tool_call_id", "name"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def _canonical_call(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        with contextlib.suppress(ValueError):  # else compared as the string it is
            arguments = json.loads(arguments) if arguments.strip() else {}
    return {
        "id": call.get("id"),
        "type": "function",
        "function": {"name": function.get("name"), "arguments": arguments},
    }


def digest(message: Canon) -> str:
    """A key for the index of returned turns (equal canonical messages, equal keys)."""
    return json.dumps(message, sort_keys=True, default=str)


__all__ = ["Canon", "canonical", "digest"]
