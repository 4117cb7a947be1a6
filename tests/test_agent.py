"""TepoAgent: the graph, its limits and error handling, token-exact stored trajectories, groups."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from _scripted_backend import ScriptedBackend, calc_call, chat_format, tiny_model_dir
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import StructuredTool

from tepo_agent.agent.collect import collect
from tepo_agent.agent.graph import AgentConfig, TepoAgent
from tepo_agent.agent.state import AgentState, final_status, route_after_model
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError, SandboxTimeoutError
from tepo_agent.store import TrajectoryStore
from tepo_agent.tools import make_calculator_tool

__all__ = ["chat_format", "tiny_model_dir"]  # fixtures


def _boom(text: str) -> str:
    raise RuntimeError(f"cannot handle {text}")


BOOM = StructuredTool.from_function(func=_boom, name="boom", description="Always fails.")
MISTAKES = [  # a malformed call, an unknown tool, a tool that raises, one that refuses
    "<tool_call>\nnot json\n</tool_call>",
    '<tool_call>\n{"name": "teleport", "arguments": {}}\n</tool_call>',
    '<tool_call>\n{"name": "boom", "arguments": {"text": "x"}}\n</tool_call>',
    '<tool_call>\n{"name": "calculator", "arguments": {"expression": "1/0"}}\n</tool_call>',
]


def make_agent(
    model_dir: Path, fmt: ChatFormat, script: list[str], store: Any = None, **config: Any
) -> tuple[TepoAgent, ScriptedBackend]:
    backend = ScriptedBackend(model_dir, fmt, script)
    tools = [make_calculator_tool(), BOOM]
    return TepoAgent(backend, fmt, tools, AgentConfig(**config), store=store), backend


def test_stored_trajectory_is_exactly_what_the_backend_saw(
    tiny_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    script = [calc_call("17*23"), "Now add one.\n" + calc_call("391+1"), "The answer is 392."]
    with TrajectoryStore(tmp_path / "t.db") as store:
        agent, backend = make_agent(tiny_model_dir, chat_format, script, store)
        result = agent.run("What is 17 * 23 + 1?", task_id="m-1", app_tag="test")
        assert result.trajectory_id is not None
        stored = store.get(result.trajectory_id)

    assert result.status == stored.status == "ok"
    assert result.answer == stored.answer == "The answer is 392."
    # Done-when: prompt + every turn's tokens == last prompt the backend got + last sampled ids
    last = backend.generations[-1]
    assert stored.full_token_ids() == backend.prompts[-1] + list(last.token_ids)
    assert stored.prompt_token_ids == backend.prompts[0]
    assistant = stored.assistant_turns()
    assert [t.token_ids for t in assistant] == [list(g.token_ids) for g in backend.generations]
    for turn, gen in zip(assistant, backend.generations, strict=True):
        assert turn.logprobs == pytest.approx(list(gen.logprobs), abs=1e-6)
        assert turn.entropies == pytest.approx(list(gen.entropies), abs=1e-6)
        assert turn.policy_version == 3
    assert stored.metadata["token_exact"] is True
    assert (stored.task, stored.task_id, stored.app_tag) == ("What is 17 * 23 + 1?", "m-1", "test")

    tools = stored.tool_turns()
    assert [(t.tool_name, t.tool_args, t.tool_result) for t in tools] == [
        ("calculator", {"expression": "17*23"}, "391"),
        ("calculator", {"expression": "391+1"}, "392"),
    ]
    h = [sum(g.entropies) / len(g.entropies) for g in backend.generations]
    assert [t.delta_entropy for t in tools] == pytest.approx([h[1] - h[0], h[2] - h[1]])
    assert [r["delta_entropy"] for r in result.tool_calls] == pytest.approx(
        [h[1] - h[0], h[2] - h[1]]
    )
    assert result.turn_entropies == pytest.approx(h)
    assert all(t.tool_latency_s is not None and t.tool_latency_s >= 0 for t in tools)


def test_model_mistakes_become_error_tool_messages_and_the_run_goes_on(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    script = [
        *MISTAKES,
        '<tool_call>\n{"name": "calculator", "arguments": {"expr": "1"}}\n</tool_call>',
        '<tool_call>\n{"name": "calcu',  # unclosed, but the turn ended (finish=stop)
        "I give up.",
    ]
    agent, backend = make_agent(tiny_model_dir, chat_format, script)
    result = agent.run("Try things.")
    assert result.status == "ok"
    assert result.answer == "I give up."
    errors = [r["error"] or "" for r in result.tool_calls]
    assert len(errors) == 6
    assert "malformed tool call" in errors[0]
    assert "unknown tool 'teleport'" in errors[1] and "calculator" in errors[1]
    assert "cannot handle x" in errors[2]
    assert "division" in errors[3].lower() or "zero" in errors[3].lower()
    # pydantic's verdict as one line naming the argument, not its multi-line text with a URL
    assert errors[4] == "error: invalid arguments for calculator: expression: Field required"
    assert "never closed" in errors[5] and "cut off" not in errors[5]
    # the model saw each error in its next prompt
    for prompt, error in zip(backend.prompts[1:], errors, strict=True):
        assert error.split("\n")[0] in chat_format.decode(prompt)
    assert result.trajectory.metadata["token_exact"] is True
    assert all(t.tool_error for t in result.trajectory.tool_turns())


def _slow(seconds: int) -> str:
    raise TimeoutError(f"no answer within {seconds} s")


def _sandbox_slow(seconds: int) -> str:
    raise SandboxTimeoutError(f"timed out after {seconds} s of wall time")


SLOW = StructuredTool.from_function(func=_slow, name="slow", description="Times out.")
SANDBOX_SLOW = StructuredTool.from_function(
    func=_sandbox_slow, name="sandbox_slow", description="Times out.", handle_tool_error=True
)


def test_each_failed_call_records_its_error_kind_as_data(
    tiny_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    script = [
        *MISTAKES,
        '<tool_call>\n{"name": "slow", "arguments": {"seconds": 3}}\n</tool_call>',
        '<tool_call>\n{"name": "sandbox_slow", "arguments": {"seconds": 3}}\n</tool_call>',
        calc_call("2+2"),
        "Done.",
    ]
    backend = ScriptedBackend(tiny_model_dir, chat_format, script)
    tools = [make_calculator_tool(), BOOM, SLOW, SANDBOX_SLOW]
    kinds = ["malformed", "unknown_tool", "tool_error", "tool_error", "timeout", "timeout", None]
    with TrajectoryStore(tmp_path / "t.db") as store:
        agent = TepoAgent(backend, chat_format, tools, AgentConfig(max_tool_calls=8), store=store)
        result = agent.run("Try things.")
        assert result.trajectory_id is not None
        stored = store.get(result.trajectory_id)
    assert [r["error_kind"] for r in result.tool_calls] == kinds
    assert [(r["error"] is None) for r in result.tool_calls] == [k is None for k in kinds]
    assert [t.error_kind for t in result.trajectory.tool_turns()] == kinds
    assert [t.error_kind for t in stored.tool_turns()] == kinds


def test_too_many_tool_calls_end_the_run_without_executing_them(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    script = [calc_call("1+1"), calc_call("2+2"), "never sampled"]
    agent, backend = make_agent(tiny_model_dir, chat_format, script, max_tool_calls=1)
    result = agent.run("Count.")
    assert result.status == "max_tool_calls"
    assert len(backend.generations) == 2
    assert [r["result"] for r in result.tool_calls] == ["2"]
    assert result.trajectory.full_token_ids() == backend.prompts[-1] + list(
        backend.generations[-1].token_ids
    )


def test_the_token_budget_ends_the_run_with_max_tokens(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    probe, _ = make_agent(tiny_model_dir, chat_format, [])
    prompt = probe.model.render_prompt(
        probe._initial_state("Budget?", 0)["messages"], probe.tool_schemas
    )
    budget = len(prompt.token_ids) + 80
    agent, backend = make_agent(
        tiny_model_dir, chat_format, [calc_call("1+1"), "x" * 200], max_total_tokens=budget
    )
    result = agent.run("Budget?")
    assert result.status == "max_tokens"
    assert len(backend.generations) == 2
    assert backend.generations[-1].finish_reason == "length"
    assert len(result.trajectory.full_token_ids()) == budget  # the last turn was cut to fit


def test_a_tool_result_that_fills_the_budget_ends_the_run_before_sampling(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    probe, _ = make_agent(tiny_model_dir, chat_format, [])
    prompt = probe.model.render_prompt(
        probe._initial_state("Budget?", 0)["messages"], probe.tool_schemas
    )
    budget = len(prompt.token_ids) + 30  # room for the call, not for its result
    agent, backend = make_agent(
        tiny_model_dir, chat_format, [calc_call("1+1"), "unused"], max_total_tokens=budget
    )
    result = agent.run("Budget?")
    assert result.status == "max_tokens"
    assert len(backend.generations) == 1
    # the unanswered tool block is still recorded, with its environment tokens and no ΔH
    tool = result.trajectory.turns[-1]
    assert tool.role == "tool" and tool.token_ids and tool.delta_entropy is None
    assert tool.tool_result == "2"


async def test_astream_shows_turn_entropy_and_delta_h_live(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    agent, _ = make_agent(tiny_model_dir, chat_format, [calc_call("6*7"), "42"])
    updates = [update async for update in agent.astream("What is 6 * 7?")]
    nodes = [next(iter(u)) for u in updates]
    assert nodes == ["model", "tools", "model", "result"]
    h0 = updates[0]["model"]["turn_entropies"][0]
    assert updates[1]["tools"]["pending_calls"][0]["result"] == "42"
    h1 = updates[2]["model"]["turn_entropies"][0]
    assert updates[2]["model"]["tool_calls"][0]["delta_entropy"] == pytest.approx(h1 - h0)
    assert updates[-1]["result"].answer == "42"


def test_a_group_runs_concurrently_under_one_group_id(
    tiny_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    backend = TransformersBackend.from_pretrained(tiny_model_dir, device="cpu", batch_wait_s=0.2)
    try:
        with TrajectoryStore(tmp_path / "g.db") as store:
            config = AgentConfig(max_new_tokens=8, max_tool_calls=1, seed=7)
            agent = TepoAgent(backend, chat_format, [make_calculator_tool()], config, store=store)
            results = agent.run_group("What is 2 + 2?", 3)
            stored = [store.get(r.trajectory_id or "") for r in results]
        assert len({t.group_id for t in stored}) == 1 and stored[0].group_id is not None
        assert len({t.id for t in stored}) == 3
        for trajectory in stored:
            turns = trajectory.assistant_turns()
            assert turns and all(len(t.token_ids) <= 8 for t in turns)
            assert all(len(t.entropies or []) == len(t.token_ids) for t in turns)
            assert trajectory.status in ("ok", "max_tool_calls", "max_tokens")
        assert backend.stats.max_batch >= 2  # the samples were decoded together
    finally:
        backend.close()


def _ai(calls: int = 0, finish: str = "stop", text: str = "x") -> AIMessage:
    return AIMessage(
        content=text,
        tool_calls=[{"name": "calculator", "args": {}, "id": f"c{i}"} for i in range(calls)],
        response_metadata={"finish_reason": finish},
    )


@pytest.mark.parametrize(
    ("messages", "extra", "route", "status"),
    [
        ([_ai(0)], {}, "finish", "ok"),
        ([_ai(0, text="")], {}, "finish", "no_answer"),
        ([_ai(0, text=" </tool_call>\n")], {}, "finish", "no_answer"),  # markup is no answer
        ([_ai(0, "length")], {}, "finish", "max_tokens"),
        ([_ai(1)], {}, "tools", None),
        ([_ai(3)], {}, "finish", "max_tool_calls"),  # 0 done + 3 asked > 2
        ([_ai(1), ToolMessage("r", tool_call_id="c0"), _ai(1)], {}, "tools", None),
        ([_ai(2), *(ToolMessage("r", tool_call_id=f"c{i}") for i in range(2)), _ai(1)], {},
         "finish", "max_tool_calls"),
        ([_ai(1)], {"total_tokens": 100}, "finish", "max_tokens"),
        ([_ai(1)], {"status": "max_tokens"}, "finish", "max_tokens"),
    ],
)  # fmt: skip
def test_routing_table(
    messages: list[Any], extra: dict[str, Any], route: str, status: str | None
) -> None:
    limits = AgentConfig(max_tool_calls=2, max_total_tokens=100)
    state: AgentState = {"messages": [HumanMessage("q"), *messages], **extra}  # type: ignore[typeddict-item]
    assert route_after_model(state, limits) == route
    if status is not None:
        assert final_status(state, limits) == status


@pytest.mark.parametrize(
    "bad",
    [
        {"max_tool_calls": -1},
        {"max_new_tokens": 0},
        {"max_total_tokens": 1},
        {"top_p": 0.0},
        {"temperature": -1.0},
        {"entropy_window": 0},
    ],
)
def test_invalid_config_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        AgentConfig(**bad)


def test_seeds_differ_per_sample_and_turn() -> None:
    config = AgentConfig(seed=1)
    seeds = {config.turn_seed(s, t) for s in range(4) for t in range(4)}
    assert len(seeds) == 16
    assert AgentConfig().turn_seed(0, 0) is None
    assert not math.isnan(float(config.turn_seed(0, 0) or 0))


def test_a_misspelled_label_is_refused_before_anything_runs(
    tiny_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    agent, backend = make_agent(tiny_model_dir, chat_format, ["The answer is 4."])
    with pytest.raises(TypeError, match="unexpected keyword argument 'app_tg'"):
        agent.run("What is 2 + 2?", app_tg="x")  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'group'"):
        agent.run_group("What is 2 + 2?", 2, group="g")  # type: ignore[call-arg]
    store = TrajectoryStore(tmp_path / "c.db")
    with pytest.raises(TypeError, match="unexpected keyword argument 'progres'"):
        collect(agent, store, [], 1, progres=False)  # type: ignore[call-arg]
    store.close()
    assert backend.prompts == []  # nothing was sampled
    assert agent.run("What is 2 + 2?", task_id="t", app_tag="a").answer == "The answer is 4."
