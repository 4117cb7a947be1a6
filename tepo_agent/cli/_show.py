"""How the command line shows tool calls: malformed ones as what the model wrote."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from tepo_agent.trajectory import Trajectory

_BLOCK = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)


def _well_formed(block: str) -> bool:
    inner = block.removeprefix("<tool_call>").removesuffix("</tool_call>").strip()
    try:
        call = json.loads(inner)
    except json.JSONDecodeError:
        return False
    return isinstance(call, dict) and isinstance(call.get("name"), str) and bool(call["name"])


def malformed_texts(trajectory: Trajectory, call_ids: Sequence[str]) -> list[str | None]:
    """For each tool call id, the text the model wrote if the call was malformed, else None.

    A malformed call's tool turn has no tool name; its text is the ``<tool_call>`` block (or the
    unclosed rest of the turn) in the assistant turn before it that is not a well-formed call.
    """
    raw: dict[str, str] = {}
    pending: list[str] = []
    for turn in trajectory.turns:
        if turn.role == "assistant":
            pending = [b for b in _BLOCK.findall(turn.text) if not _well_formed(b)]
        elif turn.tool_name is None and turn.tool_call_id is not None:
            raw[turn.tool_call_id] = pending.pop(0) if pending else ""
    return [raw.get(call_id) for call_id in call_ids]


def error_text(error: str | None) -> str:
    """A tool error as the user reads it: said once ("error: unknown tool ...")."""
    return "error: " + (error or "").removeprefix("error: ")
