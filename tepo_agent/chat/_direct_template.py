"""Render a chat template straight from transformers' compiled Jinja template.

``tokenizer.apply_chat_template`` spends about half its time around the template itself:
normalizing and deep-copying every message and tool schema into plain data (its guard against
rich objects in the sandbox), rebuilding the special-token map. The runtime renders a
conversation up to three times per tool turn (``ChatFormat.environment_tokens`` takes a text
difference), always with plain OpenAI-style dicts. :class:`DirectTemplate` renders those with
the same compiled template object transformers uses (same sandbox, filters and extensions) and
the same variables, and declines (``render`` returns None, the caller falls back) for anything
else: values that are not plain JSON data, keys it does not know, ``None`` values. It is only
created when it renders a set of probe conversations exactly as ``apply_chat_template`` does
with the installed transformers.

Example::

    direct = DirectTemplate.create(tokenizer, template)
    text = direct and direct.render(messages, tools, add_generation_prompt=True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

_MESSAGE_KEYS = frozenset({"role", "content", "tool_calls", "tool_call_id", "name"})
_SCALARS = (str, int, float, bool)

_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    }
]
_PROBE_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "calculator", "arguments": {"expression": "17 * 23"}},
}
_PROBES: list[tuple[list[dict[str, Any]], list[dict[str, Any]] | None]] = [
    ([{"role": "user", "content": "What is 17 * 23?"}], None),
    (
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is 17 * 23?"},
            {"role": "assistant", "content": "", "tool_calls": [_PROBE_CALL]},
            {"role": "tool", "content": "391", "tool_call_id": "call_1", "name": "calculator"},
            {"role": "assistant", "content": "The answer is 391."},
        ],
        _PROBE_TOOLS,
    ),
]


def _is_plain(value: Any) -> bool:
    """JSON-like data only (what transformers' sandbox guard would pass through unchanged)."""
    if type(value) in _SCALARS:
        return True
    if type(value) is dict:
        return all(type(k) is str and _is_plain(v) for k, v in value.items())
    if type(value) is list:
        return all(_is_plain(v) for v in value)
    return False


class DirectTemplate:
    """A chat template rendered without ``apply_chat_template``'s per-call preparation."""

    def __init__(self, compiled: Any, variables: Mapping[str, Any]) -> None:
        self._compiled = compiled
        self._variables = dict(variables)

    @classmethod
    def create(cls, tokenizer: PreTrainedTokenizerBase, template: str) -> DirectTemplate | None:
        """The direct renderer of ``template``, or None where it would not match transformers."""
        compile_template: Callable[[str], Any] | None
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template

            compile_template = _compile_jinja_template
        except ImportError:  # a transformers without it: always use apply_chat_template
            compile_template = None
        if compile_template is None:
            return None
        try:
            direct = cls(compile_template(template), tokenizer.special_tokens_map)
            for messages, tools in _PROBES:
                for add_generation_prompt in (False, True):
                    expected = tokenizer.apply_chat_template(
                        messages,
                        tools=tools,
                        chat_template=template,
                        add_generation_prompt=add_generation_prompt,
                        tokenize=False,
                    )
                    got = direct.render(
                        messages, tools, add_generation_prompt=add_generation_prompt
                    )
                    if got != expected:
                        return None
        except Exception:  # the template rejects the probes; apply_chat_template reports why
            return None
        return direct

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None,
        *,
        add_generation_prompt: bool,
    ) -> str | None:
        """The template's text, or None when these inputs need ``apply_chat_template``."""
        for message in messages:
            if type(message) is not dict or not message.keys() <= _MESSAGE_KEYS:
                return None
            if not _is_plain(message):
                return None
        if tools is not None and not all(_is_plain(tool) for tool in tools):
            return None
        text = self._compiled.render(
            messages=messages,
            tools=list(tools) if tools else None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self._variables,
        )
        return text if isinstance(text, str) else None


__all__ = ["DirectTemplate"]
