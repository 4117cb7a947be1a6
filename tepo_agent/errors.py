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
    │   ├── ToolTimeoutError   a tool did not finish in time (also a TimeoutError)
    │   └── SandboxError       the python sandbox could not run or contain the code
    │       └── SandboxTimeoutError   the sandboxed code ran past its wall-time limit
    ├── StoreError             the trajectory store cannot be opened, migrated or written
    └── TrainerError           training, checkpointing or publishing failed
        └── PublishError       a candidate policy could not be registered or made live

``ToolError`` and its subclasses are created on first access (``from tepo_agent.errors import
ToolError`` works as for any name): their LangChain base class costs LangChain's import, which
the store, the command line's parser and an HTTP client otherwise never pay.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

TIMED_OUT = "timed out"
"""How the message of every :class:`ToolTimeoutError` starts.

A tool that reports its errors as a message (LangChain's ``handle_tool_error``) hands the agent
only the text, so this prefix is how a handled timeout keeps its ``error_kind`` (``timeout``).
"""


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


class StoreError(TepoError):
    """The trajectory store cannot be opened, migrated or written."""


class TrainerError(TepoError):
    """Training, checkpointing or evaluation failed."""


class PublishError(TrainerError):
    """A candidate policy could not be registered, published or rolled back."""


def _tool_errors() -> dict[str, type[TepoError]]:
    from langchain_core.tools import ToolException

    class ToolError(TepoError, ToolException):
        """A tool failed; inside the agent this becomes an error tool message.

        It is also a LangChain ``ToolException``, so the built-in tools (``handle_tool_error=
        True``) return it to the model as an error ``ToolMessage`` inside any LangGraph/LangChain
        agent too.
        """

    class ToolTimeoutError(ToolError, TimeoutError):
        """A tool did not finish within its time limit.

        The message always starts with :data:`TIMED_OUT`; it is also a ``TimeoutError``, so code
        that catches timeouts generically catches it too.
        """

        def __init__(self, message: str) -> None:
            if not message.startswith(TIMED_OUT):
                message = f"{TIMED_OUT}: {message}"
            super().__init__(message)

    class SandboxError(ToolError):
        """The python sandbox could not run or contain the submitted code."""

    class SandboxTimeoutError(SandboxError, ToolTimeoutError):
        """The sandboxed code ran past its wall-time limit and was killed."""

    classes = (ToolError, ToolTimeoutError, SandboxError, SandboxTimeoutError)
    for cls in classes:
        cls.__qualname__ = cls.__name__  # pickled and shown as tepo_agent.errors.ToolError
    return {cls.__name__: cls for cls in classes}


if TYPE_CHECKING:
    from langchain_core.tools import ToolException

    class ToolError(TepoError, ToolException):
        """A tool failed (a LangChain ``ToolException`` too)."""

    class ToolTimeoutError(ToolError, TimeoutError):
        """A tool did not finish within its time limit (the message starts with TIMED_OUT)."""

    class SandboxError(ToolError):
        """The python sandbox could not run or contain the submitted code."""

    class SandboxTimeoutError(SandboxError, ToolTimeoutError):
        """The sandboxed code ran past its wall-time limit and was killed."""


_LAZY = ("ToolError", "ToolTimeoutError", "SandboxError", "SandboxTimeoutError")
_CREATE_LOCK = threading.Lock()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        with _CREATE_LOCK:  # two threads asking first must get the same classes
            if name not in globals():
                globals().update(_tool_errors())  # later lookups find the classes directly
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "TIMED_OUT",
    "BackendError",
    "BackendUnavailableError",
    "ChatFormatError",
    "ConfigError",
    "ModelLoadError",
    "PublishError",
    "SandboxError",
    "SandboxTimeoutError",
    "StoreError",
    "TepoError",
    "ToolError",
    "ToolTimeoutError",
    "TrainerError",
]
