"""TrajectoryRecorder: record runs of an application's own LangChain/LangGraph code.

An application that builds its own graph (or uses ``langchain.agents.create_agent``) around
:class:`~tepo_agent.agent.chat_model.TepoChatModel` passes this handler as a callback; every
top-level run then becomes a token-exact :class:`~tepo_agent.trajectory.Trajectory` in the store::

    recorder = TrajectoryRecorder(store, chat_format, app_tag="support-bot")
    graph.invoke({"messages": [("user", question)]}, config={"callbacks": [recorder]})
    recorder.trajectory_ids[-1]

What it reads: the chat model's input messages and the ``response_metadata`` of each result
(sampled ids, logprobs, entropies, prompt ids), the tools offered (``invocation_params``), and the
start, end or error of each tool run (name, arguments, latency, result). When the top-level run
ends, the conversation (the graph's final ``messages`` when it returns them, otherwise the last
model call's input plus its output) is turned into a trajectory by
:func:`~tepo_agent.agent.build.build_trajectory` and committed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import LLMResult

from tepo_agent.agent.build import build_trajectory
from tepo_agent.agent.state import ToolCallRecord
from tepo_agent.agent.tool_calls import call_record, exception_kind, reported_kind
from tepo_agent.chat.format import ChatFormat
from tepo_agent.trajectory import TrajectoryStatus

if TYPE_CHECKING:
    from tepo_agent.store import Store


@dataclass
class _ToolRun:
    name: str | None
    args: dict[str, Any] | None
    tool_call_id: str | None
    started: float

    def record(self, recording: _Recording, call_id: str, **outcome: Any) -> None:
        """Record this finished run as call ``call_id`` (``outcome``: result or error, kind)."""
        latency = time.perf_counter() - self.started
        recording.records[call_id] = call_record(
            call_id, self.name, self.args, latency_s=latency, **outcome
        )


@dataclass
class _Recording:
    """What one top-level run has produced so far."""

    task: str | None = None
    conversation: list[BaseMessage] = field(default_factory=list)
    pending_input: list[BaseMessage] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_runs: dict[UUID, _ToolRun] = field(default_factory=dict)
    records: dict[str, ToolCallRecord] = field(default_factory=dict)
    turns: int = 0


class TrajectoryRecorder(BaseCallbackHandler):
    """A callback handler that stores each top-level run using ``TepoChatModel`` as a trajectory.

    Args:
        store: Where trajectories are committed.
        chat_format: The chat format of the model (renders tool blocks no later prompt contains).
        app_tag, group_id, task_id: Copied into every trajectory this recorder stores.

    Attributes:
        trajectory_ids: Ids of the stored trajectories, in the order their runs ended.
    """

    run_inline = True  # keep callback order equal to event order in async graphs

    def __init__(
        self,
        store: Store,
        chat_format: ChatFormat,
        *,
        app_tag: str | None = None,
        group_id: str | None = None,
        task_id: str | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.chat_format = chat_format
        self.app_tag = app_tag
        self.group_id = group_id
        self.task_id = task_id
        self.trajectory_ids: list[str] = []
        self._lock = threading.Lock()
        self._parents: dict[UUID, UUID | None] = {}
        self._recordings: dict[UUID, _Recording] = {}

    # -- run tree ----------------------------------------------------------------------------

    def _enter(self, run_id: UUID, parent_run_id: UUID | None) -> _Recording:
        with self._lock:
            self._parents[run_id] = parent_run_id
            root = self._root(run_id)
            return self._recordings.setdefault(root, _Recording())

    def _root(self, run_id: UUID) -> UUID:
        while (parent := self._parents.get(run_id)) is not None:
            run_id = parent
        return run_id

    def _recording(self, run_id: UUID) -> _Recording | None:
        with self._lock:
            return self._recordings.get(self._root(run_id))

    # -- events ------------------------------------------------------------------------------

    def on_chain_start(
        self,
        serialized: dict[str, Any],
        inputs: dict[str, Any],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self._enter(run_id, parent_run_id)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        recording = self._enter(run_id, parent_run_id)
        history = list(messages[0]) if messages else []
        recording.pending_input = history
        if recording.task is None:
            human = [m for m in history if isinstance(m, HumanMessage)]
            recording.task = human[0].text if human else ""
        tools = (kwargs.get("invocation_params") or {}).get("tools")
        if tools:
            recording.tools = list(tools)

    def on_llm_end(
        self,
        response: LLMResult,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        recording = self._recording(run_id)
        if recording is None or not response.generations or not response.generations[0]:
            return
        message = getattr(response.generations[0][0], "message", None)
        if isinstance(message, AIMessage) and "token_ids" in message.response_metadata:
            recording.conversation = [*recording.pending_input, message]
            recording.turns += 1
        if parent_run_id is None:  # the model was invoked directly: it is the whole run
            self._finish(run_id, None, "ok")

    def on_tool_start(
        self,
        serialized: dict[str, Any],
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        recording = self._enter(run_id, parent_run_id)
        recording.tool_runs[run_id] = _ToolRun(
            name=serialized.get("name"),
            args=dict(inputs) if inputs is not None else None,
            tool_call_id=kwargs.get("tool_call_id"),
            started=time.perf_counter(),
        )

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        ended = self._tool_ended(run_id)
        if ended is None:
            return
        recording, run = ended
        call_id = run.tool_call_id
        failed = False
        if isinstance(output, ToolMessage):
            call_id = call_id or output.tool_call_id
            failed = output.status == "error"
            text = output.text
        else:
            text = output if isinstance(output, str) else str(output)
        if call_id is None:
            return
        if failed:
            run.record(recording, call_id, error=text, error_kind=reported_kind(text))
        else:
            run.record(recording, call_id, result=text)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        ended = self._tool_ended(run_id)
        if ended is None:
            return
        recording, run = ended
        call_id = run.tool_call_id or kwargs.get("tool_call_id")
        if call_id is None:
            return
        message = f"{type(error).__name__}: {error}"
        run.record(recording, call_id, error=message, error_kind=exception_kind(error))

    def _tool_ended(self, run_id: UUID) -> tuple[_Recording, _ToolRun] | None:
        recording = self._recording(run_id)
        if recording is None or run_id not in recording.tool_runs:
            return None
        return recording, recording.tool_runs.pop(run_id)

    def on_chain_end(
        self,
        outputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if parent_run_id is None:
            final = outputs.get("messages") if isinstance(outputs, dict) else None
            self._finish(run_id, final, "ok")

    def on_chain_error(
        self,
        error: BaseException,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if parent_run_id is None:
            self._finish(run_id, None, "error")

    # -- storing -----------------------------------------------------------------------------

    def _finish(self, root: UUID, final: Any, status: TrajectoryStatus) -> None:
        with self._lock:
            recording = self._recordings.pop(root, None)
            for run_id in [r for r in self._parents if self._root(r) == root]:
                del self._parents[run_id]
        if recording is None or recording.turns == 0:
            return  # no TepoChatModel turn in this run: nothing to record
        conversation = recording.conversation
        if (
            isinstance(final, list)
            and all(isinstance(m, BaseMessage) for m in final)
            and any(isinstance(m, AIMessage) and "token_ids" in m.response_metadata for m in final)
        ):
            conversation = list(final)
        last = conversation[-1] if conversation else None
        if status == "ok" and isinstance(last, AIMessage) and last.tool_calls:
            status = "error"  # the run stopped while the model was still asking for tools
        answer = last.text if isinstance(last, AIMessage) and last.text else None
        trajectory = build_trajectory(
            recording.task or "",
            conversation,
            self.chat_format,
            recording.tools,
            records=recording.records,
            status=status,
            answer=answer,
            group_id=self.group_id,
            task_id=self.task_id,
            app_tag=self.app_tag,
        )
        trajectory.created_at = time.time()
        self.trajectory_ids.append(self.store.add(trajectory))


__all__ = ["TrajectoryRecorder"]
