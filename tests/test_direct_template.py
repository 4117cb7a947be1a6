"""Rendering straight from the compiled template gives apply_chat_template's text exactly, and
hands back (None) whatever it cannot render the same way."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tepo_agent.chat._direct_template import DirectTemplate
from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import build_tokenizer

TOKENIZER = build_tokenizer()
QWEN25 = (Path(__file__).parent / "data" / "qwen2_5_chat_template.jinja").read_text()
TEMPLATES = {"default": TOKENIZER.chat_template, "qwen2.5": QWEN25}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "search", "description": "Search.", "parameters": {"type": "object"}},
    },
]
CHARS = [*"ab 1*\n\"'{}<>|é", "<|im_end|>", "<tool_call>"]
TEXT = st.lists(st.sampled_from(CHARS), max_size=12).map("".join)


@st.composite
def conversations(draw: st.DrawFn) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(TEXT)})
    for turn in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(TEXT)})
        calls = [
            {
                "id": f"call_{turn}_{k}",
                "type": "function",
                "function": {"name": "calculator", "arguments": {"expression": draw(TEXT)}},
            }
            for k in range(draw(st.integers(0, 2)))
        ]
        assistant: dict[str, Any] = {"role": "assistant", "content": draw(TEXT)}
        if calls:
            assistant["tool_calls"] = calls
        messages.append(assistant)
        for call in calls:
            messages.append(
                {"role": "tool", "content": draw(TEXT), "tool_call_id": call["id"],
                 "name": "calculator"}
            )  # fmt: skip
    return messages[: draw(st.integers(1, len(messages)))]


def reference(template: str, messages: list[dict[str, Any]], tools: Any, gen: bool) -> str:
    text = TOKENIZER.apply_chat_template(
        messages, tools=tools, chat_template=template, add_generation_prompt=gen, tokenize=False
    )
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize("name", TEMPLATES)
@settings(max_examples=60, deadline=None)
@given(messages=conversations(), with_tools=st.booleans(), gen=st.booleans())
def test_renders_exactly_what_apply_chat_template_renders(
    name: str, messages: list[dict[str, Any]], with_tools: bool, gen: bool
) -> None:
    direct = DirectTemplate.create(TOKENIZER, TEMPLATES[name])
    assert direct is not None
    tools = TOOLS if with_tools else None
    assert direct.render(messages, tools, add_generation_prompt=gen) == reference(
        TEMPLATES[name], messages, tools, gen
    )


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": None},  # transformers drops None keys: not ours to copy
        {"role": "assistant", "content": "x", "reasoning_content": "because"},  # aliased fields
        {"role": "user", "content": "x", "extra": 1},  # a key templates might read
        {"role": "user", "content": object()},  # not plain data: the sandbox guard applies
    ],
)
def test_declines_messages_it_cannot_render_the_same_way(message: dict[str, Any]) -> None:
    direct = DirectTemplate.create(TOKENIZER, TOKENIZER.chat_template)
    assert direct is not None
    assert direct.render([message], None, add_generation_prompt=True) is None


def test_chat_format_falls_back_for_declined_messages() -> None:
    fmt = ChatFormat(TOKENIZER)
    assert fmt._direct is not None
    message = {"role": "user", "content": "hi", "reasoning_content": "r"}
    assert fmt.render_text([message]) == reference(TOKENIZER.chat_template, [message], None, True)


def test_not_created_where_the_template_renders_differently_than_it_would() -> None:
    # a stand-in for a transformers whose apply_chat_template renders the probes otherwise
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"

    class Tokenizer:
        special_tokens_map: ClassVar[dict[str, str]] = {}

        @staticmethod
        def apply_chat_template(*args: Any, **kwargs: Any) -> str:
            return "different"

    assert DirectTemplate.create(Tokenizer(), template) is None  # type: ignore[arg-type]
