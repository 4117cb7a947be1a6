"""Held-out items for an evaluation: one suite or all three, from a seed training never saw.

The worlds themselves (entities, corpus, index, tools) come from ``tepo_agent.tasks.world``;
this module only gathers a suite selection into one item list with one tool set, and names the
default place where held-out worlds are built (``default_home()/eval``, reused across runs).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from langchain_core.tools import BaseTool

from tepo_agent.errors import ConfigError
from tepo_agent.paths import default_home
from tepo_agent.tasks import SuiteName, Task
from tepo_agent.tasks.world import EVAL_SEED, held_out

SuiteChoice = Literal["math", "knowledge", "deep_search", "all"]
SUITES: tuple[SuiteName, ...] = get_args(SuiteName)

__all__ = ["EVAL_SEED", "SUITES", "SuiteChoice", "default_eval_dir", "held_out_items", "suites_of"]


def default_eval_dir() -> Path:
    """Where held-out worlds are built and indexed: ``default_home()/eval``."""
    return default_home() / "eval"


def suites_of(choice: str) -> tuple[SuiteName, ...]:
    """The suites a ``--suite`` choice names (``all``: the three of them)."""
    if choice == "all":
        return SUITES
    if choice not in SUITES:
        raise ConfigError(f"unknown suite {choice!r}: choose math, knowledge, deep_search or all")
    return (choice,)  # type: ignore[return-value]


def held_out_items(
    suite: str,
    n: int,
    seed: int = EVAL_SEED,
    *,
    workdir: str | os.PathLike[str] | None = None,
) -> tuple[list[Task], list[BaseTool]]:
    """``n`` held-out items per suite of ``suite`` (or of all three) and the tools to solve them.

    Every suite of one seed shares one world, so one tool set serves them all.
    """
    where = Path(workdir) if workdir is not None else default_eval_dir()
    tasks: list[Task] = []
    tools: list[BaseTool] = []
    for name in suites_of(suite):
        items, tools = held_out(name, n, seed, workdir=where)
        tasks += items
    return tasks, tools
