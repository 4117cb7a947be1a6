"""TepoAgent: the tool-using agent as a compiled LangGraph ``StateGraph``.

::

    START → model ─┬─ tools → model → …
                   └─ END

``model`` samples one assistant turn with :class:`~tepo_agent.agent.chat_model.TepoChatModel`
(token-exact, with per-token logprobs and entropy) and either hands its tool calls to ``tools``,
which executes them, or ends the run: it then sets the answer and the status in the same update
(one LangGraph step per turn, no separate finishing step). Model output never crashes a run: a
malformed call,
an unknown tool or a tool that raises becomes an error tool message the model reads on its next
turn. The limits of :class:`~tepo_agent.agent.state.AgentConfig` end a run with status
``max_tool_calls`` or ``max_tokens``.

Each finished run becomes a token-exact :class:`~tepo_agent.trajectory.Trajectory` (with ΔH_k per
tool call) and, when a store is given, is committed to it atomically.

Example::

    agent = TepoAgent(backend, chat_format, [make_calculator_tool()], store=TrajectoryStore(db))
    result = agent.run("What is 17 * 23?")
    result.answer, result.trajectory_id, [c["delta_entropy"] for c in result.tool_calls]
    results = agent.run_group("What is 17 * 23?", n=8)      # one GRPO group, batched sampling
    async for update in agent.astream("What is 17 * 23?"): ...
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict, Unpack

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from pydantic import ValidationError

from tepo_agent.agent.build import build_trajectory
from tepo_agent.agent.chat_model import TepoChatModel
from tepo_agent.agent.state import (
    AgentConfig,
    AgentState,
    ToolCallRecord,
    final_status,
    route_after_model,
)
from tepo_agent.agent.sync import run_sync
from tepo_agent.agent.tool_calls import call_record, exception_kind, failed_call, reported_kind
from tepo_agent.backends.base import Backend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.entropy import delta_entropy
from tepo_agent.errors import ConfigError, argument_errors
from tepo_agent.trajectory import Trajectory, TrajectoryStatus, new_id

if TYPE_CHECKING:
    from tepo_agent.store import Store


class RunLabels(TypedDict, total=False):
    """What a run's trajectory is filed under (keyword arguments of :meth:`TepoAgent.run` and
    its siblings; each absent one is None).

    Attributes:
        group_id: The GRPO group the run belongs to (``run_group`` makes one when absent).
        task_id: The task the run answers, for verifiers and evaluation.
        app_tag: A free label for the application or experiment.
    """

    group_id: str | None
    task_id: str | None
    app_tag: str | None


def check_keywords(function: str, given: Mapping[str, Any], allowed: Any) -> None:
    """Python's own TypeError for a keyword that the TypedDict ``allowed`` does not declare
    (``**kwargs: Unpack[...]`` alone accepts any keyword at run time)."""
    for name in given:
        if name not in allowed.__annotations__:
            raise TypeError(f"{function}() got an unexpected keyword argument {name!r}")


@dataclass
class AgentResult:
    """What one run produced.

    Attributes:
        answer: The final turn's text (None when the run ended before an answer).
        status: ``ok``, ``max_tool_calls``, ``max_tokens`` or ``error``.
        trajectory: The token-exact record of the run.
        trajectory_id: Its id in the store, or None when the agent has no store.
        tool_calls: Every executed call with its result or error, latency and ΔH_k.
        turn_entropies: H(t_k) of every assistant turn.
    """

    answer: str | None
    status: TrajectoryStatus
    trajectory: Trajectory
    trajectory_id: str | None
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    turn_entropies: list[float] = field(default_factory=list)


class TepoAgent:
    """A LangGraph tool-calling agent over a tepo-agent backend, recording token-exact runs."""

    def __init__(
        self,
        backend: Backend,
        chat_format: ChatFormat,
        tools: Sequence[BaseTool],
        config: AgentConfig | None = None,
        store: Store | None = None,
    ) -> None:
        self.config = config or AgentConfig()
        self.store = store
        self.chat_format = chat_format
        self.tools = {t.name: t for t in tools}
        if len(self.tools) != len(tools):
            raise ConfigError("tool names must be unique; rename the duplicate tools")
        self.tool_schemas = [convert_to_openai_tool(t) for t in tools]
        cfg = self.config
        self.model = TepoChatModel(
            backend=backend,
            chat_format=chat_format,
            max_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            entropy_window=cfg.entropy_window,
        )
        self.graph: CompiledStateGraph[Any, Any, Any, Any] = self._build_graph()

    # -- the graph ---------------------------------------------------------------------------

    def _build_graph(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        graph = StateGraph(AgentState)
        # ``model`` routes itself with a Command: a separate router function would be one more
        # traced LangChain run per turn
        graph.add_node("model", self._model_node, destinations=("tools", END))
        graph.add_node("tools", self._tools_node)
        graph.add_edge(START, "model")
        graph.add_edge("tools", "model")
        return graph.compile()

    async def _model_node(self, state: AgentState) -> Command[Literal["tools", "__end__"]]:
        messages = state["messages"]
        prompt = self.model.render_prompt(messages, self.tool_schemas)
        left = self.config.max_total_tokens - len(prompt.token_ids)
        if left < 1:  # calls whose following turn is never sampled keep ΔH = None
            return Command(
                update={
                    "status": "max_tokens",
                    "answer": None,
                    "prompt_tokens": len(prompt.token_ids),
                    "tool_calls": list(state.get("pending_calls", [])),
                    "pending_calls": [],
                },
                goto=END,
            )
        turn = len(state.get("turn_entropies", []))
        reply = await self.model.asample(
            prompt,
            max_tokens=min(self.config.max_new_tokens, left),
            seed=self.config.turn_seed(state.get("sample", 0), turn),
        )
        meta = reply.response_metadata
        h = float(meta["turn_entropy"]) if meta["turn_entropy"] is not None else float("nan")
        previous = state.get("turn_entropies", [])
        delta = delta_entropy(previous[-1], h) if previous else None
        finished = [{**record, "delta_entropy": delta} for record in state.get("pending_calls", [])]
        total = len(meta["prompt_token_ids"]) + len(meta["token_ids"])
        update: dict[str, Any] = {
            "messages": [reply],
            "turn_entropies": [h],
            "tool_calls": finished,
            "pending_calls": [],
            "prompt_tokens": len(meta["prompt_token_ids"]),
            "generated_tokens": len(meta["token_ids"]),
            "total_tokens": total,
        }
        after: AgentState = {**state, "messages": [*messages, reply], "total_tokens": total}
        if route_after_model(after, self.config) == "tools":
            return Command(update=update, goto="tools")
        update["status"] = final_status(after, self.config)
        update["answer"] = reply.text or None
        return Command(update=update, goto=END)

    async def _tools_node(self, state: AgentState) -> dict[str, Any]:
        last = state["messages"][-1]
        assert isinstance(last, AIMessage)
        jobs = [self._call_tool(c["id"] or new_id(), c["name"], c["args"]) for c in last.tool_calls]
        # one call runs in this task; several run concurrently
        results = [await jobs[0]] if len(jobs) == 1 else list(await asyncio.gather(*jobs))
        cut = last.response_metadata.get("finish_reason") == "length"
        for call in last.invalid_tool_calls:
            why = (call.get("error") or "unparseable") + (", cut off by max_tokens" if cut else "")
            error = (
                f"error: malformed tool call ({why}). "
                "Call a tool as "
                '<tool_call>\n{"name": "<tool>", "arguments": {...}}\n</tool_call>'
            )
            call_id = f"invalid-{new_id()[:8]}"
            results.append(failed_call(call_id, call.get("name"), None, error, "malformed"))
        return {
            "messages": [message for message, _ in results],
            "pending_calls": [record for _, record in results],
        }

    async def _call_tool(
        self, call_id: str, name: str, args: dict[str, Any]
    ) -> tuple[ToolMessage, ToolCallRecord]:
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(sorted(self.tools)) or "none"
            error = f"error: unknown tool {name!r}; tools: {known}"
            return failed_call(call_id, name, args, error, "unknown_tool")
        start = time.perf_counter()
        try:
            # Invoked as a tool call, so a tool that handles its own errors
            # (``handle_tool_error``) answers with an error ToolMessage instead of raising.
            output = await tool.ainvoke(
                {"type": "tool_call", "id": call_id, "name": name, "args": args}
            )
        except ValidationError as exc:  # arguments that do not fit: one line naming each
            latency = time.perf_counter() - start
            message = f"error: invalid arguments for {name}: {argument_errors(exc)}"
            return failed_call(call_id, name, args, message, "tool_error", latency)
        except Exception as exc:  # any tool failure is shown to the model, never raised
            latency = time.perf_counter() - start
            error = f"error: {type(exc).__name__}: {exc}"
            return failed_call(call_id, name, args, error, exception_kind(exc), latency)
        latency = time.perf_counter() - start
        if isinstance(output, ToolMessage):
            if output.status == "error":
                kind = reported_kind(output.text)
                return failed_call(call_id, name, args, f"error: {output.text}", kind, latency)
            output = output.content
        text = output if isinstance(output, str) else str(output)
        record = call_record(call_id, name, args, latency_s=latency, result=text)
        return ToolMessage(content=text, tool_call_id=call_id, name=name), record

    # -- running -----------------------------------------------------------------------------

    def _initial_state(self, question: str, sample: int) -> AgentState:
        messages: list[BaseMessage] = []
        if self.config.system_prompt is not None:
            messages.append(SystemMessage(self.config.system_prompt))
        messages.append(HumanMessage(question))
        return {"messages": messages, "sample": sample}  # type: ignore[typeddict-item]

    def _run_config(self) -> dict[str, Any]:
        return {"recursion_limit": 2 * self.config.max_tool_calls + 10}

    def _result(
        self,
        question: str,
        state: AgentState,
        **labels: Unpack[RunLabels],
    ) -> AgentResult:
        status = state.get("status") or "error"
        records = {r["tool_call_id"]: r for r in state.get("tool_calls", [])}
        trajectory = build_trajectory(
            question,
            state["messages"],
            self.chat_format,
            self.tool_schemas,
            records=records,
            status=status,
            answer=state.get("answer"),
            group_id=labels.get("group_id"),
            task_id=labels.get("task_id"),
            app_tag=labels.get("app_tag"),
        )
        trajectory.created_at = time.time()
        stored = self.store.add(trajectory) if self.store is not None else None
        return AgentResult(
            answer=state.get("answer"),
            status=status,
            trajectory=trajectory,
            trajectory_id=stored,
            tool_calls=list(state.get("tool_calls", [])),
            turn_entropies=list(state.get("turn_entropies", [])),
        )

    async def arun(
        self, question: str, *, sample: int = 0, **labels: Unpack[RunLabels]
    ) -> AgentResult:
        """Answer ``question`` with tools; record (and store) the trajectory under ``labels``."""
        check_keywords("arun", labels, RunLabels)
        state = await self.graph.ainvoke(
            self._initial_state(question, sample), config=self._run_config()
        )
        return self._result(question, state, **labels)

    def run(self, question: str, **labels: Unpack[RunLabels]) -> AgentResult:
        """Synchronous :meth:`arun`."""
        result: AgentResult = run_sync(self.arun(question, **labels))
        return result

    async def arun_group(
        self, question: str, n: int, **labels: Unpack[RunLabels]
    ) -> list[AgentResult]:
        """``n`` concurrent samples of one question under one group id (the backend batches)."""
        check_keywords("arun_group", labels, RunLabels)
        if n < 1:
            raise ConfigError(f"a group needs n >= 1 samples, got {n}")
        grouped: RunLabels = {**labels, "group_id": labels.get("group_id") or new_id()}
        runs = [self.arun(question, sample=i, **grouped) for i in range(n)]
        return list(await asyncio.gather(*runs))

    def run_group(self, question: str, n: int, **labels: Unpack[RunLabels]) -> list[AgentResult]:
        """Synchronous :meth:`arun_group`."""
        results: list[AgentResult] = run_sync(self.arun_group(question, n, **labels))
        return results

    async def astream(
        self, question: str, **labels: Unpack[RunLabels]
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield the graph's updates as they happen, then ``{"result": AgentResult}``.

        Each update is ``{node_name: partial_state}``: ``model`` updates carry the new turn's
        entropy (``turn_entropies``) and the ΔH of the calls before it (``tool_calls``), ``tools``
        updates the tool results (``pending_calls``).
        """
        check_keywords("astream", labels, RunLabels)
        state: AgentState = {}  # type: ignore[typeddict-item]
        async for mode, chunk in self.graph.astream(
            self._initial_state(question, 0),
            config=self._run_config(),
            stream_mode=["updates", "values"],
        ):
            if mode == "updates":
                yield chunk
            else:
                state = chunk
        yield {"result": self._result(question, state, **labels)}


__all__ = ["AgentConfig", "AgentResult", "RunLabels", "TepoAgent"]
