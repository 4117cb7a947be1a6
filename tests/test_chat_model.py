"""TepoChatModel: token-exact prompts, parsed tool calls, metadata, LangChain/LangGraph use."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, TypedDict

import pytest
from _scripted_backend import ScriptedBackend, calc_call, chat_format, tiny_model_dir
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.prebuilt import ToolNode

from tepo_agent.agent.chat_model import TepoChatModel, message_to_openai
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.tools import make_calculator_tool

__all__ = ["chat_format", "tiny_model_dir"]  # fixtures

QUESTION = [SystemMessage("You are terse."), HumanMessage("What is 17 * 23?")]


def scripted(model_dir: Path, fmt: ChatFormat, *script: str) -> ScriptedBackend:
    return ScriptedBackend(model_dir, fmt, script)


def test_first_turn_prompt_is_the_template_render_and_metadata_is_complete(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    backend = scripted(tiny_model_dir, chat_format, "It is 391.")
    model = TepoChatModel(backend=backend, chat_format=chat_format)
    reply = model.invoke(QUESTION)
    meta = reply.response_metadata
    expected = chat_format.render([message_to_openai(m) for m in QUESTION], [])
    assert backend.prompts == [expected]
    assert meta["prompt_token_ids"] == expected
    assert meta["prompt_render"] == "fresh"
    generation = backend.generations[0]
    assert meta["token_ids"] == list(generation.token_ids)
    assert meta["logprobs"] == list(generation.logprobs)
    assert meta["entropies"] == list(generation.entropies)
    assert meta["turn_entropy"] == pytest.approx(
        math.fsum(meta["entropies"]) / len(meta["entropies"])
    )
    assert meta["policy_version"] == 3
    assert meta["entropy_kind"] == "exact"
    assert meta["finish_reason"] == "stop"
    assert "entropy_lower" not in meta
    assert reply.content == "It is 391."
    assert reply.tool_calls == []
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["output_tokens"] == len(meta["token_ids"])


def test_entropy_window_averages_only_the_first_tokens(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    backend = scripted(tiny_model_dir, chat_format, "A fairly long answer here.")
    model = TepoChatModel(backend=backend, chat_format=chat_format, entropy_window=2)
    meta = model.invoke(QUESTION).response_metadata
    assert meta["turn_entropy"] == pytest.approx(sum(meta["entropies"][:2]) / 2)


def test_tool_calls_are_parsed_and_malformed_ones_become_invalid_tool_calls(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    text = (
        calc_call("17*23") + '\n<tool_call>\n{"name": "calculator", "arguments": [1]}\n</tool_call>'
    )
    backend = scripted(tiny_model_dir, chat_format, text)
    model = TepoChatModel(backend=backend, chat_format=chat_format).bind_tools(
        [make_calculator_tool()]
    )
    reply = model.invoke(QUESTION)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [
        ("calculator", {"expression": "17*23"})
    ]
    assert reply.tool_calls[0]["id"]
    assert len(reply.invalid_tool_calls) == 1
    assert "arguments" in (reply.invalid_tool_calls[0]["error"] or "")
    # the bound tool schema is rendered into the prompt
    assert "calculator(expression)" in chat_format.decode(backend.prompts[0])  # tools offered


def test_continuing_after_a_tool_result_splices_the_sampled_ids(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    # a non-canonical spacing: re-tokenizing the text would not reproduce these sampled ids' text
    backend = scripted(
        tiny_model_dir, chat_format, "Let me  compute.\n" + calc_call("17*23"), "391"
    )
    model = TepoChatModel(backend=backend, chat_format=chat_format).bind_tools(
        [make_calculator_tool()]
    )
    first = model.invoke(QUESTION)
    call = first.tool_calls[0]
    result = ToolMessage("391", tool_call_id=call["id"], name="calculator")
    second = model.invoke([*QUESTION, first, result])
    meta1, meta2 = first.response_metadata, second.response_metadata
    history = [message_to_openai(m) for m in [*QUESTION, first]]
    env = chat_format.environment_tokens(
        history, [message_to_openai(result)], backend_tools(model), sampled_end_of_turn=True
    )
    assert meta2["prompt_render"] == "spliced"
    assert backend.prompts[1] == meta1["prompt_token_ids"] + meta1["token_ids"] + env
    assert meta2["prompt_token_ids"] == backend.prompts[1]


def backend_tools(model: object) -> list[dict[str, object]]:
    return list(model.kwargs["tools"])  # type: ignore[attr-defined]


def test_foreign_or_edited_histories_are_rerendered_and_marked(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    backend = scripted(tiny_model_dir, chat_format, calc_call("1+1"), "a", "b")
    model = TepoChatModel(backend=backend, chat_format=chat_format)
    own = model.invoke(QUESTION)
    result = ToolMessage("2", tool_call_id=own.tool_calls[0]["id"], name="calculator")

    foreign = AIMessage(content="", tool_calls=own.tool_calls)  # same turn, no sampled ids
    reply = model.invoke([*QUESTION, foreign, result])
    full = chat_format.render([message_to_openai(m) for m in [*QUESTION, foreign, result]], [])
    assert reply.response_metadata["prompt_render"] == "rerendered"
    assert backend.prompts[1] == full

    edited = [SystemMessage("You are terse."), HumanMessage("What is 1 + 1?"), own, result]
    reply = model.invoke(edited)
    assert reply.response_metadata["prompt_render"] == "rerendered"


def test_string_stop_sequences_and_forced_tool_choice_are_refused(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    model = TepoChatModel(backend=scripted(tiny_model_dir, chat_format), chat_format=chat_format)
    with pytest.raises(ConfigError, match="stop"):
        model.invoke(QUESTION, stop=["\n"])
    with pytest.raises(ConfigError, match="tool_choice"):
        model.bind_tools([make_calculator_tool()], tool_choice="calculator")


async def test_async_invoke_matches_the_real_backend_generation(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    backend = TransformersBackend.from_pretrained(tiny_model_dir, device="cpu")
    try:
        model = TepoChatModel(
            backend=backend, chat_format=chat_format, max_tokens=12, temperature=0
        )
        reply = await model.ainvoke(QUESTION)
        meta = reply.response_metadata
        direct = await backend.generate(meta["prompt_token_ids"], model._sampling_params(None, {}))
        assert meta["token_ids"] == list(direct.token_ids)  # greedy: the same sample
        assert meta["logprobs"] == pytest.approx(list(direct.logprobs), abs=1e-5)
        assert len(meta["entropies"]) == len(meta["token_ids"]) <= 12
        sync_meta = model.invoke(QUESTION).response_metadata  # generate_sync path
        assert sync_meta["token_ids"] == meta["token_ids"]
    finally:
        backend.close()


def test_works_inside_create_agent(tiny_model_dir: Path, chat_format: ChatFormat) -> None:
    backend = scripted(tiny_model_dir, chat_format, calc_call("17*23"), "The answer is 391.")
    model = TepoChatModel(backend=backend, chat_format=chat_format)
    agent = create_agent(model, [make_calculator_tool()], system_prompt="You are terse.")
    out = agent.invoke({"messages": [HumanMessage("What is 17 * 23?")]})
    messages = out["messages"]
    assert [type(m).__name__ for m in messages] == [
        "HumanMessage",
        "AIMessage",
        "ToolMessage",
        "AIMessage",
    ]
    assert messages[2].content == "391"
    first, last = messages[1].response_metadata, messages[3].response_metadata
    assert last["prompt_render"] == "spliced"
    prefix = first["prompt_token_ids"] + first["token_ids"]
    assert backend.prompts[1][: len(prefix)] == prefix
    assert messages[3].content == "The answer is 391."


class _State(TypedDict):
    messages: Annotated[list[AnyMessage], add_messages]


async def test_works_inside_a_hand_built_state_graph(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    backend = scripted(tiny_model_dir, chat_format, calc_call("2**10"), "1024")
    tools = [make_calculator_tool()]
    model = TepoChatModel(backend=backend, chat_format=chat_format).bind_tools(tools)

    async def call_model(state: _State) -> dict[str, list[AnyMessage]]:
        return {"messages": [await model.ainvoke(state["messages"])]}

    def route(state: _State) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(_State)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", END])
    graph.add_edge("tools", "model")
    out = await graph.compile().ainvoke({"messages": list(QUESTION)})
    assert out["messages"][-2].content == "1024"
    assert out["messages"][-1].content == "1024"
    assert out["messages"][-1].response_metadata["prompt_render"] == "spliced"
