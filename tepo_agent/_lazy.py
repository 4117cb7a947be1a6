"""Public names of a package that load on first access (PEP 562 module ``__getattr__``).

The package roots (``tepo_agent``, ``tepo_agent.agent``, ``tepo_agent.backends``,
``tepo_agent.tools``) re-export names from their modules without importing them, so that
importing a package costs nothing and a process loads only what it uses (no torch for the store
or HTTP, no LangChain for a tool's parser). Each declares which module provides which names::

    __getattr__, __dir__ = lazy_exports(__name__, {
        "tepo_agent.agent.graph": "AgentResult TepoAgent",
        "tepo_agent.agent.state": "AgentConfig",
    })

This module imports nothing of the package, so every layer may use it (tools included).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, provided: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, whose lazy names are ``provided``: a
    module path → the names it defines, separated by spaces. A name, once loaded, is stored in
    the package so later lookups skip ``__getattr__``."""
    where = {name: module for module, names in provided.items() for name in names.split()}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__


__all__ = ["lazy_exports"]
