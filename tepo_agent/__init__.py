"""tepo-agent: an agent runtime that tracks token entropy live and learns online with TEPO.

The public API. Light names (records, errors) load eagerly; the rest (the store and registry,
whose SQLite layer imports pandas, and everything that needs torch, transformers or LangGraph)
load on first access, so ``import tepo_agent`` and ``tepo-agent --help`` stay fast::

    from tepo_agent import TepoAgent, TransformersBackend, ChatFormat, TrajectoryStore

The trainer (``tepo_agent.trainer``) is never imported from here: serving must not load training
code.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tepo_agent import _moved
from tepo_agent.backends.base import Backend, Generation, SamplingParams
from tepo_agent.errors import (
    BackendError,
    BackendUnavailableError,
    ChatFormatError,
    ConfigError,
    ModelLoadError,
    PublishError,
    StoreError,
    TepoError,
    TrainerError,
)
from tepo_agent.trajectory import Trajectory, Turn

if TYPE_CHECKING:
    from tepo_agent.agent.chat_model import TepoChatModel
    from tepo_agent.agent.graph import AgentResult, TepoAgent
    from tepo_agent.agent.recorder import TrajectoryRecorder
    from tepo_agent.agent.state import AgentConfig
    from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
    from tepo_agent.backends.transformers_backend import TransformersBackend
    from tepo_agent.chat.format import ChatFormat, ParsedTurn, ToolCall
    from tepo_agent.errors import SandboxError, ToolError
    from tepo_agent.model.default import ensure_default_model, init_model
    from tepo_agent.policy.registry import PolicyRecord, PolicyRegistry
    from tepo_agent.store import TrajectoryStore

__version__ = "0.1.0"

_moved.install()  # old module paths (tepo_agent.hotswap, ...) keep working for one release

_LAZY: dict[str, str] = {
    "AgentConfig": "tepo_agent.agent.state",
    "AgentResult": "tepo_agent.agent.graph",
    "ChatFormat": "tepo_agent.chat.format",
    "HttpBackend": "tepo_agent.backends.http_backend",
    "HttpBackendConfig": "tepo_agent.backends.http_backend",
    "ParsedTurn": "tepo_agent.chat.format",
    "PolicyRecord": "tepo_agent.policy.registry",
    "PolicyRegistry": "tepo_agent.policy.registry",
    "SandboxError": "tepo_agent.errors",
    "TepoAgent": "tepo_agent.agent.graph",
    "TepoChatModel": "tepo_agent.agent.chat_model",
    "ToolCall": "tepo_agent.chat.format",
    "ToolError": "tepo_agent.errors",
    "TrajectoryRecorder": "tepo_agent.agent.recorder",
    "TrajectoryStore": "tepo_agent.store",
    "TransformersBackend": "tepo_agent.backends.transformers_backend",
    "ensure_default_model": "tepo_agent.model.default",
    "init_model": "tepo_agent.model.default",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tepo_agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
]
