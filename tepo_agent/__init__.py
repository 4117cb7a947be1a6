"""tepo-agent: an agent runtime that tracks token entropy live and learns online with TEPO.

The public API. Every name loads on first access (``from tepo_agent import X`` imports the one
module that defines X), so ``import tepo_agent`` costs nothing, the command line's parser stays
fast, and a process that only reads the store or talks HTTP never loads torch, transformers or
LangGraph::

    from tepo_agent import TepoAgent, TransformersBackend, ChatFormat, TrajectoryStore

The trainer (``tepo_agent.trainer``), the server and the CLI are never imported from here
(docs/architecture.md, "Layers"; the import-linter contracts in pyproject.toml).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tepo_agent import _moved
from tepo_agent._lazy import lazy_exports

if TYPE_CHECKING:
    from tepo_agent.agent.chat_model import TepoChatModel
    from tepo_agent.agent.graph import AgentResult, TepoAgent
    from tepo_agent.agent.recorder import TrajectoryRecorder
    from tepo_agent.agent.state import AgentConfig
    from tepo_agent.backends.base import Backend, Generation, SamplingParams
    from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.chat.format import ChatFormat, ParsedTurn, ToolCall
    from tepo_agent.errors import (
        BackendError,
        BackendUnavailableError,
        ChatFormatError,
        ConfigError,
        ModelLoadError,
        PublishError,
        SandboxError,
        StoreError,
        TepoError,
        ToolError,
        TrainerError,
    )
    from tepo_agent.model.default import ensure_default_model, init_model
    from tepo_agent.policy.registry import PolicyRecord, PolicyRegistry
    from tepo_agent.store import Store, TrajectoryStore, open_store
    from tepo_agent.trajectory import Trajectory, Turn

__version__ = "0.1.0"

_moved.install()  # old module paths (tepo_agent.hotswap, ...) keep working for one release

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "tepo_agent.agent.chat_model": "TepoChatModel",
        "tepo_agent.agent.graph": "AgentResult TepoAgent",
        "tepo_agent.agent.recorder": "TrajectoryRecorder",
        "tepo_agent.agent.state": "AgentConfig",
        "tepo_agent.backends.base": "Backend Generation SamplingParams",
        "tepo_agent.backends.http_backend": "HttpBackend HttpBackendConfig",
        "tepo_agent.backends.transformers_backend": "TransformersBackend",
        "tepo_agent.chat.format": "ChatFormat ParsedTurn ToolCall",
        "tepo_agent.errors": "BackendError BackendUnavailableError ChatFormatError ConfigError "
        "ModelLoadError PublishError SandboxError StoreError TepoError ToolError TrainerError",
        "tepo_agent.model.default": "ensure_default_model init_model",
        "tepo_agent.policy.registry": "PolicyRecord PolicyRegistry",
        "tepo_agent.store": "Store TrajectoryStore open_store",
        "tepo_agent.trajectory": "Trajectory Turn",
    },
)


__all__ = [
    "AgentConfig",
    "AgentResult",
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "ChatFormat",
    "ChatFormatError",
    "ConfigError",
    "Generation",
    "HttpBackend",
    "HttpBackendConfig",
    "ModelLoadError",
    "ParsedTurn",
    "PolicyRecord",
    "PolicyRegistry",
    "PublishError",
    "SamplingParams",
    "SandboxError",
    "Store",
    "StoreError",
    "TepoAgent",
    "TepoChatModel",
    "TepoError",
    "ToolCall",
    "ToolError",
    "TrainerError",
    "Trajectory",
    "TrajectoryRecorder",
    "TrajectoryStore",
    "TransformersBackend",
    "Turn",
    "__version__",
    "ensure_default_model",
    "init_model",
    "open_store",
]
