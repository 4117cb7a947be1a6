"""TrajectoryRecorder: runs of an application's own graph become stored token-exact trajectories."""

from __future__ import annotations

from pathlib import Path

import pytest
from _scripted_backend import ScriptedBackend, calc_call, chat_format, tiny_model_dir
from langchain.agents import create_agent
from langchain_core.messages import HumanMessage
from langchain_core.tools import StructuredTool, ToolException

from tepo_agent.agent.chat_model import TepoChatModel
from tepo_agent.agent.recorder import TrajectoryRecorder
from tepo_agent.chat.format import ChatFormat
from tepo_agent.store import TrajectoryStore
from tepo_agent.tools import make_calculator_tool

__all__ = ["chat_format", "tiny_model_dir"]  # fixtures


def test_create_agent_run_is_recorded_token_exact_with_tool_details(
    tiny_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    script = [calc_call("12*12"), calc_call("144-4"), "It is 140."]
    backend = ScriptedBackend(tiny_model_dir, chat_format, script)
    model = TepoChatModel(backend=backend, chat_format=chat_format)
    agent = create_agent(model, [make_calculator_tool()], system_prompt="Be brief.")
    with TrajectoryStore(tmp_path / "r.db") as store:
        recorder = TrajectoryRecorder(store, chat_format, app_tag="my-app", task_id="t-9")
        out = agent.invoke(
            {"messages": [HumanMessage("What is 12*12 - 4?")]}, config={"callbacks": [recorder]}
        )
        assert out["messages"][-1].content == "It is 140."
        assert len(recorder.trajectory_ids) == 1
        stored = store.get(recorder.trajectory_ids[0])

    assert stored.task == "What is 12*12 - 4?"
    assert (stored.app_tag, stored.task_id, stored.status) == ("my-app", "t-9", "ok")
    assert stored.answer == "It is 140."
    assert stored.metadata["token_exact"] is True
    assert stored.full_token_ids() == backend.prompts[-1] + list(backend.generations[-1].token_ids)
    assert [t.token_ids for t in stored.assistant_turns()] == [
        list(g.token_ids) for g in backend.generations
    ]
    tools = stored.tool_turns()
    assert [(t.tool_name, t.tool_args, t.tool_result) for t in tools] == [
        ("calculator", {"expression": "12*12"}, "144"),
        ("calculator", {"expression": "144-4"}, "140"),
    ]
    assert all(t.tool_latency_s is not None for t in tools)
    h = [sum(g.entropies) / len(g.entropies) for g in backend.generations]
    assert [t.delta_entropy for t in tools] == [h[1] - h[0], h[2] - h[1]]


def _divide(a: float, b: float) -> str:
    if b == 0:
        raise ToolException("division by zero")
    return str(a / b)


async def test_failing_tools_are_recorded_handled_or_not(
    tiny_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    handled = StructuredTool.from_function(
        func=_divide, name="divide", description="a / b", handle_tool_error=True
    )
    call = '<tool_call>\n{"name": "divide", "arguments": {"a": 1, "b": 0}}\n</tool_call>'
    backend = ScriptedBackend(tiny_model_dir, chat_format, [call, "Cannot divide by zero.", call])
    model = TepoChatModel(backend=backend, chat_format=chat_format)
    with TrajectoryStore(tmp_path / "r.db") as store:
        recorder = TrajectoryRecorder(store, chat_format)
        agent = create_agent(model, [handled])
        await agent.ainvoke(
            {"messages": [HumanMessage("What is 1/0?")]}, config={"callbacks": [recorder]}
        )
        stored = store.get(recorder.trajectory_ids[0])
        (tool,) = stored.tool_turns()
        assert tool.tool_name == "divide" and tool.tool_args == {"a": 1, "b": 0}
        assert tool.tool_error and "division" in tool.tool_error
        assert tool.error_kind == "tool_error"
        assert tool.tool_result is None
        last = backend.generations[-1]
        assert stored.full_token_ids() == backend.prompts[-1] + list(last.token_ids)

        # an unhandled tool error ends the user's run: it is stored with status "error"
        unhandled = StructuredTool.from_function(func=_divide, name="divide", description="a / b")
        crashing = create_agent(model, [unhandled])
        with pytest.raises(ToolException):
            await crashing.ainvoke(
                {"messages": [HumanMessage("And now?")]}, config={"callbacks": [recorder]}
            )
        failed = store.get(recorder.trajectory_ids[1])
        assert failed.status == "error"
        assert [t.role for t in failed.turns] == ["assistant"]


def test_a_direct_model_call_is_one_trajectory_and_runs_without_the_model_are_skipped(
    tiny_model_dir: Path, chat_format: ChatFormat, tmp_path: Path
) -> None:
    backend = ScriptedBackend(tiny_model_dir, chat_format, ["Hello."])
    model = TepoChatModel(backend=backend, chat_format=chat_format)
    with TrajectoryStore(tmp_path / "r.db") as store:
        recorder = TrajectoryRecorder(store, chat_format)
        model.invoke([HumanMessage("Hi")], config={"callbacks": [recorder]})
        make_calculator_tool().invoke({"expression": "1+1"}, config={"callbacks": [recorder]})
        assert len(recorder.trajectory_ids) == 1
        stored = store.get(recorder.trajectory_ids[0])
        assert store.count() == 1
    assert stored.task == "Hi"
    assert stored.answer == "Hello."
    assert stored.full_token_ids() == backend.prompts[0] + list(backend.generations[0].token_ids)
