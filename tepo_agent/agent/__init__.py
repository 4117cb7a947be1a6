"""The agent: a LangGraph tool loop that records token-exact trajectories.

- :mod:`~tepo_agent.agent.graph`: :class:`TepoAgent` (the compiled graph) and :class:`AgentResult`;
- :mod:`~tepo_agent.agent.state`: :class:`AgentConfig`, the graph state and its routing rules;
- :mod:`~tepo_agent.agent.chat_model`: :class:`TepoChatModel`, a LangChain chat model over a
  backend that keeps token ids, logprobs and entropy;
- :mod:`~tepo_agent.agent.build`: a finished run's messages → a :class:`~tepo_agent.trajectory.
  Trajectory`;
- :mod:`~tepo_agent.agent.recorder`: :class:`TrajectoryRecorder`, the same record from your own
  LangGraph graph via callbacks;
- :mod:`~tepo_agent.agent.sync`: the event loops behind the synchronous twins (``run``...).

The names load on first access (LangGraph and the backends are not imported by ``import
tepo_agent.agent``), and ``from tepo_agent.agent import TepoAgent`` works as it did when the
agent was one module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tepo_agent._lazy import lazy_exports

if TYPE_CHECKING:
    from tepo_agent.agent.chat_model import TepoChatModel
    from tepo_agent.agent.graph import AgentResult, RunLabels, TepoAgent
    from tepo_agent.agent.recorder import TrajectoryRecorder
    from tepo_agent.agent.state import AgentConfig, AgentState, ToolCallRecord

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "tepo_agent.agent.chat_model": "TepoChatModel",
        "tepo_agent.agent.graph": "AgentResult RunLabels TepoAgent",
        "tepo_agent.agent.recorder": "TrajectoryRecorder",
        "tepo_agent.agent.state": "AgentConfig AgentState ToolCallRecord",
    },
)


__all__ = [
    "AgentConfig",
    "AgentResult",
    "AgentState",
    "RunLabels",
    "TepoAgent",
    "TepoChatModel",
    "ToolCallRecord",
    "TrajectoryRecorder",
]
