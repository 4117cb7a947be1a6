"""The exception tree: one root, ToolError a LangChain ToolException, created on first use."""

from __future__ import annotations

import pickle
import subprocess
import sys

from langchain_core.tools import ToolException

import tepo_agent
from tepo_agent.errors import ConfigError, SandboxError, TepoError, ToolError


def test_tool_errors_are_tepo_errors_and_langchain_tool_exceptions():
    assert issubclass(ToolError, TepoError) and issubclass(ToolError, ToolException)
    assert issubclass(SandboxError, ToolError)
    assert issubclass(ConfigError, TepoError) and issubclass(ConfigError, ValueError)
    assert tepo_agent.ToolError is ToolError and tepo_agent.SandboxError is SandboxError


def test_a_tool_error_pickles_as_the_same_class():
    copy = pickle.loads(pickle.dumps(SandboxError("the sandbox could not start")))
    assert type(copy) is SandboxError
    assert str(copy) == "the sandbox could not start"
    assert f"{ToolError.__module__}.{ToolError.__qualname__}" == "tepo_agent.errors.ToolError"


def test_the_error_tree_loads_langchain_only_when_a_tool_error_is_asked_for():
    code = (
        "import sys; from tepo_agent.errors import TepoError, StoreError; "
        "before = 'langchain_core' in sys.modules; "
        "from tepo_agent.errors import ToolError; "
        "print(before, 'langchain_core' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
