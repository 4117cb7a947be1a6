"""Tools the agent calls, each a LangChain tool (installed as ``tepo_agent.tools``).

- ``calculator``: safe arithmetic (:mod:`tepo_agent.tools.calculator`);
- ``python``: code in a contained subprocess (:mod:`tepo_agent.tools.sandbox`,
  :mod:`tepo_agent.tools.python_tool`);
- ``search``: BM25 over a local SQLite FTS5 index (:mod:`tepo_agent.tools.search`).

:func:`default_tools` builds the set the agent uses by default. Tools import nothing of the
runtime but :mod:`tepo_agent.errors` (and the bottom layer's helpers, such as
:mod:`tepo_agent._lazy`) and never the trainer (the import-linter contracts in
pyproject.toml). The names load on first access, so importing one tool module (or
:data:`~tepo_agent.tools.catalog.TOOL_NAMES` for the command line's parser) does not load the
others: the search index needs sqlite-utils, the tools LangChain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tepo_agent._lazy import lazy_exports

if TYPE_CHECKING:
    from tepo_agent.tools.calculator import evaluate, make_calculator_tool
    from tepo_agent.tools.catalog import TOOL_NAMES, default_tools, make_tool
    from tepo_agent.tools.python_tool import make_python_tool
    from tepo_agent.tools.sandbox import Containment, PythonSandbox, SandboxConfig, SandboxResult
    from tepo_agent.tools.search import SearchHit, SearchIndex, build_index, make_search_tool

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "tepo_agent.tools.calculator": "evaluate make_calculator_tool",
        "tepo_agent.tools.catalog": "TOOL_NAMES default_tools make_tool",
        "tepo_agent.tools.python_tool": "make_python_tool",
        "tepo_agent.tools.sandbox": "Containment PythonSandbox SandboxConfig SandboxResult",
        "tepo_agent.tools.search": "SearchHit SearchIndex build_index make_search_tool",
    },
)


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
