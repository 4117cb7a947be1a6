"""The exception tree of tepo-agent.

Every error the library raises on purpose derives from :class:`TepoError`, so an application can
catch one type. Messages say what was wrong and what to do about it.

    TepoError
    ├── ConfigError            bad configuration or arguments (also a ValueError)
    ├── ModelLoadError         a model or tokenizer directory cannot be loaded
    ├── ChatFormatError        a conversation cannot be rendered to tokens
    ├── BackendError           generation failed
    │   └── BackendUnavailableError   the server cannot be reached / timed out (retryable)
    ├── ToolError              a tool failed (an error tool message; also a LangChain ToolException)
    │   └── SandboxError       the python sandbox could not run or contain the code
    ├── StoreError             the trajectory store cannot be opened, migrated or written
    └── TrainerError           training, checkpointing or publishing failed
        └── PublishError       a candidate policy could not be registered or made live
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from langchain_core.tools import ToolException
    from pydantic import ValidationError


class TepoError(Exception):
    """Root of every error tepo-agent raises on purpose."""


class ConfigError(TepoError, ValueError):
    """A configuration value or argument is invalid."""


class ModelLoadError(TepoError):
    """A model or tokenizer directory cannot be loaded."""


class ChatFormatError(TepoError):
    """A conversation cannot be rendered into token ids."""


class BackendError(TepoError):
    """The model backend failed to generate."""


class BackendUnavailableError(BackendError):
    """The backend cannot be reached (connection refused, timeout, 5xx after retries)."""


def _tool_errors() -> tuple[type[TepoError], type[TepoError]]:
    """ToolError and SandboxError, made on first use: their LangChain base class takes ~0.5 s to
    import, which a process that only reads the store (``tepo-agent feedback``) never needs."""
    from langchain_core.tools import ToolException

    class ToolError(TepoError, ToolException):
        """A tool failed; inside the agent this becomes an error tool message.

        It is also a LangChain ``ToolException``, so the built-in tools
        (``handle_tool_error=True``) return it to the model as an error ``ToolMessage`` inside
        any LangGraph/LangChain agent too.
        """

    class SandboxError(ToolError):
        """The python sandbox could not run or contain the submitted code."""

    for cls in (ToolError, SandboxError):
        cls.__module__ = __name__
        cls.__qualname__ = cls.__name__
    return ToolError, SandboxError


if TYPE_CHECKING:

    class ToolError(TepoError, ToolException):
        """A tool failed (see :func:`_tool_errors`)."""

    class SandboxError(ToolError):
        """The python sandbox could not run or contain the submitted code."""


def __getattr__(name: str) -> Any:
    if name in ("ToolError", "SandboxError"):
        tool_error, sandbox_error = _tool_errors()
        globals().update(ToolError=tool_error, SandboxError=sandbox_error)
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StoreError(TepoError):
    """The trajectory store cannot be opened, migrated or written."""


class TrainerError(TepoError):
    """Training, checkpointing or evaluation failed."""


class PublishError(TrainerError):
    """A candidate policy could not be registered, published or rolled back."""


def argument_errors(exc: ValidationError) -> str:
    """A pydantic validation error as one line naming each argument (``code: Field required``),
    instead of pydantic's multi-line text with a documentation URL."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "arguments"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ChatFormatError",
    "ConfigError",
    "ModelLoadError",
    "PublishError",
    "SandboxError",
    "StoreError",
    "TepoError",
    "ToolError",
    "TrainerError",
    "argument_errors",
]
