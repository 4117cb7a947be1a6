"""Tools the agent calls, each a LangChain tool (installed as ``tepo_agent.tools``).

- ``calculator``: safe arithmetic (:mod:`tepo_agent.tools.calculator`);
- ``python``: code in a contained subprocess (:mod:`tepo_agent.tools.sandbox`,
  :mod:`tepo_agent.tools.python_tool`);
- ``search``: BM25 over a local SQLite FTS5 index (:mod:`tepo_agent.tools.search`).

:func:`default_tools` builds the set the agent uses by default. Tools never import the trainer.
"""

from tepo_agent.tools.calculator import evaluate, make_calculator_tool
from tepo_agent.tools.catalog import TOOL_NAMES, default_tools, make_tool
from tepo_agent.tools.python_tool import make_python_tool
from tepo_agent.tools.sandbox import Containment, PythonSandbox, SandboxConfig, SandboxResult
from tepo_agent.tools.search import SearchHit, SearchIndex, build_index, make_search_tool

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
