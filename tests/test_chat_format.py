"""Chat rendering is token-exact: incremental rendering equals full rendering, text round-trips,
and sampled turns parse into tool calls without ever raising."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tepo_agent.chat.format import ChatFormat, InvalidToolCall, ParsedTurn, ToolCall
from tepo_agent.errors import ChatFormatError
from tepo_agent.model.default import TOOL_MARKUP_TOKENS, build_tokenizer

QWEN25_TEMPLATE = (Path(__file__).parent / "data" / "qwen2_5_chat_template.jinja").read_text()

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the knowledge base.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module", params=["default", "qwen2.5"])
def fmt(request, tokenizer) -> ChatFormat:
    template = QWEN25_TEMPLATE if request.param == "qwen2.5" else None
    return ChatFormat(tokenizer, chat_template=template)


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _tool(call_id: str, name: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}


def _sampled(fmt: ChatFormat, history, assistant, tools) -> list[int]:
    """What a model that follows the template exactly samples: the template's own rendering of
    the assistant message after the generation prompt, up to and including the end of turn."""
    prompt = fmt.render_text(history, tools, add_generation_prompt=True)
    full = fmt.render_text([*history, assistant], tools, add_generation_prompt=False)
    assert full.startswith(prompt)
    end_of_turn = fmt.decode([fmt.end_of_turn_id])
    turn = full[len(prompt) :]
    return fmt.encode(turn[: turn.rindex(end_of_turn) + len(end_of_turn)])


CONVERSATIONS = {
    "one call, then two parallel calls, then an answer": [
        (
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [_call("a", "calculator", {"expression": "17 * 23"})],
            },
            [_tool("a", "calculator", "391")],
        ),
        (
            {
                "role": "assistant",
                "content": "Now both halves.",
                "tool_calls": [
                    _call("b", "calculator", {"expression": "391 + 9"}),
                    _call("c", "search", {"query": "who built the bridge in Oslo"}),
                ],
            },
            [_tool("b", "calculator", "400"), _tool("c", "search", "[1] Ada built it in 1901.")],
        ),
        ({"role": "assistant", "content": "The answer is 400, built by Ada."}, []),
    ],
    "unicode arguments and results": [
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [_call("x", "search", {"query": "Zürich 東京 ✓"})],
            },
            [_tool("x", "search", "résumé: 東京 is 🗼")],
        ),
        ({"role": "assistant", "content": "東京."}, []),
    ],
}


@pytest.mark.parametrize("with_system", [False, True])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_incremental_rendering_equals_full_rendering(fmt, name, with_system):
    history: list[dict[str, Any]] = [{"role": "user", "content": "What is 17 * 23 + 9?"}]
    if with_system:
        history.insert(0, {"role": "system", "content": "Be brief."})
    ids = fmt.render(history, TOOLS)
    for assistant, tool_messages in CONVERSATIONS[name]:
        sampled = _sampled(fmt, history, assistant, TOOLS)
        assert sampled[-1] == fmt.end_of_turn_id
        parsed = fmt.parse(fmt.decode(sampled))
        assert parsed.invalid_calls == ()
        assert [(c.name, c.arguments) for c in parsed.tool_calls] == [
            (c["function"]["name"], c["function"]["arguments"])
            for c in assistant.get("tool_calls", [])
        ]
        assert parsed.content == (assistant["content"] or "")
        ids += sampled
        history.append(assistant)
        if tool_messages:
            ids += fmt.environment_tokens(history, tool_messages, TOOLS, sampled_end_of_turn=True)
            history += tool_messages
            assert ids == fmt.render(history, TOOLS, add_generation_prompt=True)
    full = fmt.render(history, TOOLS, add_generation_prompt=False)
    assert ids == full[: len(ids)]
    assert fmt.decode(full[len(ids) :]) == "\n"  # the template's newline after the last <|im_end|>


def test_history_from_parsed_turn_renders_the_same_environment(fmt):
    """The agent appends ``parse(...).as_message()`` (fresh ids, dict arguments)."""
    history = [{"role": "user", "content": "Add 2 and 3."}]
    assistant = {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("a", "calculator", {"expression": "2 + 3"})],
    }
    sampled = _sampled(fmt, history, assistant, TOOLS)
    turn = fmt.parse(fmt.decode(sampled))
    result = [_tool(turn.tool_calls[0].id, "calculator", "5")]
    env = fmt.environment_tokens(
        [*history, turn.as_message()], result, TOOLS, sampled_end_of_turn=True
    )
    assert fmt.render(history, TOOLS) + sampled + env == fmt.render(
        [*history, assistant, *result], TOOLS
    )


def test_cut_off_turn_gets_the_whole_closer(fmt):
    history = [{"role": "user", "content": "Tell me about Oslo."}]
    answer = {"role": "assistant", "content": "Oslo is the capital of Norway and its largest city."}
    sampled = _sampled(fmt, history, answer, None)[:6]  # max_tokens hit: no end of turn
    assert fmt.end_of_turn_id not in sampled
    cut = {"role": "assistant", "content": fmt.parse(fmt.decode(sampled)).content}
    follow_up = [{"role": "user", "content": "Go on."}]
    env = fmt.environment_tokens([*history, cut], follow_up, sampled_end_of_turn=False)
    assert env[0] == fmt.end_of_turn_id
    assert fmt.decode(env).startswith(fmt.decode([fmt.end_of_turn_id]) + "\n<|im_start|>user\n")
    assert fmt.render(history) + sampled + env == fmt.render([*history, cut, *follow_up])
    # The same turn with the end of turn sampled gets the closer minus that token.
    closed = fmt.environment_tokens([*history, cut], follow_up, sampled_end_of_turn=True)
    assert env == [fmt.end_of_turn_id, *closed]


def test_stop_tokens_are_end_of_turn_then_eos(tokenizer):
    fmt = ChatFormat(tokenizer)
    assert fmt.decode([fmt.end_of_turn_id]) == "<|im_end|>"
    assert fmt.stop_token_ids == (
        fmt.end_of_turn_id,
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )


def test_from_pretrained_uses_the_saved_template(default_model_dir):
    fmt = ChatFormat.from_pretrained(default_model_dir)
    text = fmt.render_text([{"role": "user", "content": "hi"}])
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fmt.decode(fmt.render([{"role": "user", "content": "hi"}])) == text


def test_tool_markup_tokens_are_atomic(tokenizer):
    fmt = ChatFormat(tokenizer)
    for markup in TOOL_MARKUP_TOKENS:
        assert len(fmt.encode(markup)) == 1
        assert len(fmt.encode(f"x{markup}y")) == 3


def test_arguments_given_as_json_string_render_like_a_dict(fmt):
    as_dict = {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("a", "search", {"query": "q"})],
    }
    as_text = {
        "role": "assistant",
        "content": "",
        "tool_calls": [_call("a", "search", '{"query": "q"}')],
    }
    user = {"role": "user", "content": "?"}
    assert fmt.render_text([user, as_text], TOOLS) == fmt.render_text([user, as_dict], TOOLS)
    broken = {"role": "assistant", "content": "", "tool_calls": [_call("a", "search", "{oops")]}
    with pytest.raises(ChatFormatError, match="not valid JSON"):
        fmt.render_text([user, broken], TOOLS)


# -- templates that cannot be rendered incrementally -----------------------------------------


def test_template_that_changes_the_generation_prompt_is_refused(tokenizer):
    thinking = (
        "{%- for m in messages %}"
        "{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{%- endif %}"
    )
    with pytest.raises(ChatFormatError, match="incremental rendering"):
        ChatFormat(tokenizer, chat_template=thinking)


def test_template_that_rewrites_earlier_turns_is_refused(tokenizer):
    rewrites = (
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + (m.content or '') }}"
        "{%- if m.role == 'assistant' and not loop.last %}(old){% endif %}{{ '<|im_end|>\\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
    )
    fmt = ChatFormat(tokenizer, chat_template=rewrites)
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    with pytest.raises(ChatFormatError, match="incremental rendering"):
        fmt.environment_tokens(history, [_tool("a", "search", "r")], sampled_end_of_turn=True)


def test_environment_tokens_need_the_sampled_assistant_message_last(tokenizer):
    fmt = ChatFormat(tokenizer)
    with pytest.raises(ChatFormatError, match="must end with the assistant message"):
        fmt.environment_tokens([{"role": "user", "content": "q"}], [], sampled_end_of_turn=True)


def test_tokenizer_without_template_is_refused(tokenizer):
    bare = build_tokenizer()
    bare.chat_template = None
    with pytest.raises(ChatFormatError, match="no chat template"):
        ChatFormat(bare)


def test_template_errors_become_chat_format_errors(tokenizer):
    fmt = ChatFormat(tokenizer)
    with pytest.raises(ChatFormatError, match="no 'role'"):
        fmt.render_text([{"content": "who am I"}])
    with pytest.raises(ChatFormatError, match="cannot render"):
        fmt.render_text([{"role": "user"}])  # content missing: the template adds None to a str


# -- round trip ---------------------------------------------------------------------------

_PIECES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["<|im_start|>", "<|im_end|>", "<|endoftext|>", *TOOL_MARKUP_TOKENS, "\n", " "]
    ),
)


@settings(max_examples=300, deadline=None)
@given(text=st.lists(_PIECES, max_size=8).map("".join))
def test_decode_inverts_encode_for_any_text(tokenizer, text):
    fmt = ChatFormat(tokenizer)
    assert fmt.decode(fmt.encode(text)) == text


def test_ids_stay_inside_the_vocabulary(tokenizer):
    fmt = ChatFormat(tokenizer)
    ids = fmt.encode("\x00\uffff 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \t\r\n" + "ä" * 50)
    assert ids and all(0 <= i < 512 for i in ids)


# -- parsing ------------------------------------------------------------------------------


def _parse(text: str) -> ParsedTurn:
    return ChatFormat(build_tokenizer()).parse(text)


def test_parse_plain_answer_drops_the_end_of_turn_marker():
    assert _parse("  The answer is 42.\n<|im_end|>") == ParsedTurn("The answer is 42.", (), ())
    assert _parse("Done.<|im_end|><|endoftext|>").content == "Done."


def test_parse_one_valid_call_tolerates_whitespace():
    turn = _parse(
        'Let me compute.\n<tool_call>  \n {"name": "calculator", '
        '"arguments": {"expression": "2+3"}}\n\n</tool_call><|im_end|>'
    )
    assert turn.content == "Let me compute."
    assert turn.invalid_calls == ()
    (call,) = turn.tool_calls
    assert (call.name, call.arguments) == ("calculator", {"expression": "2+3"})
    assert call.id.startswith("call_")


def test_parse_several_calls_keep_order_and_get_fresh_ids():
    blocks = [
        {"name": "calculator", "arguments": {"expression": "1+1"}},
        {"name": "search", "arguments": {"query": "Oslo"}},
        {"name": "search", "arguments": '{"query": "Lima"}'},
        {"name": "noop"},
    ]
    text = "".join(f"<tool_call>\n{json.dumps(b)}\n</tool_call>\n" for b in blocks)
    turn = _parse(text)
    assert [(c.name, c.arguments) for c in turn.tool_calls] == [
        ("calculator", {"expression": "1+1"}),
        ("search", {"query": "Oslo"}),
        ("search", {"query": "Lima"}),
        ("noop", {}),
    ]
    assert len({c.id for c in turn.tool_calls}) == 4
    assert _parse(text).tool_calls[0].id != turn.tool_calls[0].id
    assert turn.content == ""


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('{"name": "calculator", "arguments": {"expression": "1+1"}', "not valid JSON"),
        ("calculator(1+1)", "not valid JSON"),
        ('{"arguments": {"expression": "1+1"}}', 'no "name"'),
        ('{"name": "", "arguments": {}}', 'no "name"'),
        ('{"name": 7, "arguments": {}}', 'no "name"'),
        ('["calculator", {"expression": "1+1"}]', "must be a JSON object"),
        ('{"name": "calculator", "arguments": [1, 2]}', '"arguments" must be a JSON object'),
        ('{"name": "calculator", "arguments": "1+1"}', "not a JSON object"),
    ],
)
def test_parse_bad_call_becomes_invalid_call(body, error):
    good = '<tool_call>{"name": "search", "arguments": {"query": "q"}}</tool_call>'
    raw = f"<tool_call>\n{body}\n</tool_call>"
    turn = _parse(f"Trying.\n{raw}\n{good}<|im_end|>")
    assert turn.content == "Trying."
    assert [c.name for c in turn.tool_calls] == ["search"]
    (invalid,) = turn.invalid_calls
    assert isinstance(invalid, InvalidToolCall)
    assert invalid.raw == raw
    assert error in invalid.error


def test_parse_unterminated_call_is_invalid_and_not_content():
    turn = _parse('Checking.\n<tool_call>\n{"name": "search", "argu')
    assert turn.content == "Checking."
    assert turn.tool_calls == ()
    (invalid,) = turn.invalid_calls
    assert invalid.raw == '<tool_call>\n{"name": "search", "argu'
    assert "never closed" in invalid.error


def test_parsed_turn_as_message_is_an_openai_assistant_message():
    call = ToolCall(id="call_1", name="search", arguments={"query": "q"})
    message = ParsedTurn("Looking.", (call,), ()).as_message()
    assert message == {
        "role": "assistant",
        "content": "Looking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "search", "arguments": {"query": "q"}},
            }
        ],
    }
    assert ParsedTurn("Hi.", (), ()).as_message() == {"role": "assistant", "content": "Hi."}
