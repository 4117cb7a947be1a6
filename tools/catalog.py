"""The default tool set and lookup by name, shared by the agent and ``tepo-agent tool``.

The tool modules are imported by the functions that build them: the command line's parser reads
:data:`TOOL_NAMES` without loading LangChain, pydantic and sqlite-utils.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool
    from pydantic import BaseModel

    from tepo_agent.tools.sandbox import SandboxConfig

TOOL_NAMES: tuple[str, ...] = ("calculator", "python", "search")
"""Names of the built-in tools."""


def default_tools(
    search_db: str | Path | None = None, sandbox: SandboxConfig | None = None
) -> list[BaseTool]:
    """``calculator`` and ``python`` (limits from ``sandbox``), plus ``search`` over the index
    at ``search_db`` when one is given."""
    from tepo_agent.tools.calculator import make_calculator_tool
    from tepo_agent.tools.python_tool import make_python_tool
    from tepo_agent.tools.search import make_search_tool

    tools = [make_calculator_tool(), make_python_tool(config=sandbox)]
    if search_db is not None:
        tools.append(make_search_tool(search_db))
    return tools


def make_tool(
    name: str,
    search_db: str | Path | None = None,
    sandbox: SandboxConfig | None = None,
) -> BaseTool:
    """Build the one built-in tool called ``name`` (only that one: no sandbox for calculator)."""
    from tepo_agent.errors import ConfigError

    if name == "calculator":
        from tepo_agent.tools.calculator import make_calculator_tool

        return make_calculator_tool()
    if name == "python":
        from tepo_agent.tools.python_tool import make_python_tool

        return make_python_tool(config=sandbox)
    if name == "search":
        from tepo_agent.tools.search import make_search_tool

        if search_db is None:
            raise ConfigError("the search tool needs an index: pass search_db (--search-db PATH)")
        return make_search_tool(search_db)
    raise ConfigError(f"unknown tool {name!r}; built-in tools: {', '.join(TOOL_NAMES)}")


def argument_schemas() -> dict[str, type[BaseModel]]:
    """Each built-in tool's arguments model, by tool name (for help text)."""
    from tepo_agent.tools.calculator import CalculatorArgs
    from tepo_agent.tools.python_tool import PythonArgs
    from tepo_agent.tools.search import SearchArgs

    return {"calculator": CalculatorArgs, "python": PythonArgs, "search": SearchArgs}


__all__ = ["TOOL_NAMES", "argument_schemas", "default_tools", "make_tool"]
