"""tepo-agent: an agent runtime that tracks token entropy live and learns online with TEPO."""

from tepo_agent.backends import Backend, Generation, SamplingParams
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
from tepo_agent.registry import PolicyRecord, PolicyRegistry
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, Turn

__version__ = "0.1.0"

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailableError",
    "ChatFormatError",
    "ConfigError",
    "Generation",
    "ModelLoadError",
    "PolicyRecord",
    "PolicyRegistry",
    "PublishError",
    "SamplingParams",
    "SandboxError",
    "StoreError",
    "TepoError",
    "ToolError",
    "TrainerError",
    "Trajectory",
    "TrajectoryStore",
    "Turn",
    "__version__",
]
