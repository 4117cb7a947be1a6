"""Tools the agent calls, each a LangChain tool (installed as ``tepo_agent.tools``).

- ``calculator``: safe arithmetic (:mod:`tepo_agent.tools.calculator`);
- ``python``: code in a contained subprocess (:mod:`tepo_agent.tools.sandbox`,
  :mod:`tepo_agent.tools.python_tool`);
- ``search``: BM25 over a local SQLite FTS5 index (:mod:`tepo_agent.tools.search`).

:func:`default_tools` builds the set the agent uses by default. Tools import nothing of the
runtime but :mod:`tepo_agent.errors` and never the trainer (the import-linter contracts in
pyproject.toml). The names load on first access, so importing one tool module (or
:data:`~tepo_agent.tools.catalog.TOOL_NAMES` for the command line's parser) does not load the
others: the search index needs sqlite-utils, the tools LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tepo_agent.tools.calculator import evaluate, make_calculator_tool
    from tepo_agent.tools.catalog import TOOL_NAMES, default_tools, make_tool
    from tepo_agent.tools.python_tool import make_python_tool
    from tepo_agent.tools.sandbox import Containment, PythonSandbox, SandboxConfig, SandboxResult
    from tepo_agent.tools.search import SearchHit, SearchIndex, build_index, make_search_tool

_LAZY: dict[str, str] = {
    "TOOL_NAMES": "tepo_agent.tools.catalog",
    "Containment": "tepo_agent.tools.sandbox",
    "PythonSandbox": "tepo_agent.tools.sandbox",
    "SandboxConfig": "tepo_agent.tools.sandbox",
    "SandboxResult": "tepo_agent.tools.sandbox",
    "SearchHit": "tepo_agent.tools.search",
    "SearchIndex": "tepo_agent.tools.search",
    "build_index": "tepo_agent.tools.search",
    "default_tools": "tepo_agent.tools.catalog",
    "evaluate": "tepo_agent.tools.calculator",
    "make_calculator_tool": "tepo_agent.tools.calculator",
    "make_python_tool": "tepo_agent.tools.python_tool",
    "make_search_tool": "tepo_agent.tools.search",
    "make_tool": "tepo_agent.tools.catalog",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "TOOL_NAMES",
    "Containment",
    "PythonSandbox",
    "SandboxConfig",
    "SandboxResult",
    "SearchHit",
    "SearchIndex",
    "build_index",
    "default_tools",
    "evaluate",
    "make_calculator_tool",
    "make_python_tool",
    "make_search_tool",
    "make_tool",
]
