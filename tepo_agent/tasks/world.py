"""The task world: a seeded knowledge base on disk, its search index, its tools, held-out items.

The bootstrap fine-tunes the default model in training worlds, and evaluation (``tepo-agent
eval``, the gate, the demo, compare) scores policies in held-out worlds, so the world belongs to
none of them (docs/world.md describes it). A world directory holds ``corpus.jsonl`` and
``search.db`` (its FTS5 index); a bootstrapped model directory carries one training world beside
the weights (``MODEL/world``) for examples that run the agent on it.

The default agent solves a world's items with two tools (``world_tools``): ``calculator`` and
``search`` over that world's index, with one-line descriptions and compact results (the default
model reads them on every turn).

Held-out evaluation (``held_out``) builds a world from a seed at or above ``EVAL_SEED`` (never used
for training; its entity names are disjoint from every training world's) and returns items of
one suite with the tools to solve them::

    tasks, tools = held_out("deep_search", 50, seed=EVAL_SEED, workdir=Path("/tmp/eval"))
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool, StructuredTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from tepo_agent.errors import ConfigError
from tepo_agent.tasks.base import EVAL_SEED, SuiteName, Task
from tepo_agent.tasks.knowledge import KnowledgeBase, deep_search_suite, knowledge_suite
from tepo_agent.tasks.math_tasks import math_suite
from tepo_agent.tools.calculator import make_calculator_tool
from tepo_agent.tools.search import SearchIndex, build_index

SEARCH_HITS = 1
"""Hits the world's search tool returns (few: the default model's context is short)."""


class _SearchArgs(BaseModel):
    query: str


def _tools(search: Callable[[str], str]) -> list[BaseTool]:
    """The calculator and a search tool answering with ``search``: the one definition of the
    world's tools (names, descriptions, argument schemas)."""

    async def asearch(query: str) -> str:  # a read of a small local index: inline too
        return search(query)

    return [
        make_calculator_tool(brief=True),
        StructuredTool.from_function(
            func=search,
            coroutine=asearch,
            name="search",
            description="Search the knowledge base.",
            args_schema=_SearchArgs,
            handle_tool_error=True,
        ),
    ]


def world_tools(world_dir: str | os.PathLike[str]) -> list[BaseTool]:
    """The tools the default agent uses in a world: calculator and search over its index.

    They are the real tools with one-line descriptions and minimal argument schemas (the
    calculator is ``make_calculator_tool(brief=True)``): the tool schemas are part of every
    prompt. Search returns the text of the best ``SEARCH_HITS`` documents,
    one per line, best first.
    """
    index = SearchIndex(Path(world_dir) / "search.db")

    def search(query: str) -> str:
        hits = index.search(query, SEARCH_HITS)
        if not hits:
            return "No results."
        return "\n".join(h.snippet.replace("[", "").replace("]", "") for h in hits)

    return _tools(search)


def tool_schemas() -> list[dict[str, Any]]:
    """The OpenAI function schemas of the world's tools (no world needed): what a prompt
    renders and the default tokenizer's corpus contains."""
    return [convert_to_openai_tool(t) for t in _tools(lambda query: "")]


def build_world(seed: int, world_dir: str | os.PathLike[str]) -> KnowledgeBase:
    """Write the world of ``seed`` (corpus and search index) into ``world_dir``; reuses an index
    already built there for the same seed."""
    kb = KnowledgeBase(seed=seed)
    world = Path(world_dir)
    world.mkdir(parents=True, exist_ok=True)
    stamp = world / "seed"
    if stamp.is_file() and stamp.read_text() == str(seed) and (world / "search.db").is_file():
        return kb
    corpus = kb.write_corpus(world / "corpus.jsonl")
    build_index(corpus, world / "search.db")
    stamp.write_text(str(seed))
    return kb


def suite_tasks(suite: SuiteName, kb: KnowledgeBase, n: int, seed: int) -> list[Task]:
    """``n`` items of ``suite`` in world ``kb`` (the item generator seeded with ``seed``)."""
    if suite == "math":
        return math_suite(n, seed=seed)
    if suite == "knowledge":
        return knowledge_suite(kb, n, seed=seed)
    if suite == "deep_search":
        return deep_search_suite(kb, n, seed=seed)
    raise ConfigError(f"unknown suite {suite!r}: choose math, knowledge or deep_search")


def held_out(
    suite: SuiteName, n: int, seed: int = EVAL_SEED, *, workdir: str | os.PathLike[str]
) -> tuple[list[Task], list[BaseTool]]:
    """Held-out items of ``suite`` and the tools to solve them.

    Builds and indexes the world of ``seed`` under ``workdir/world-SEED`` (reused when already
    there). ``seed`` must be at least ``EVAL_SEED``: smaller seeds are training worlds.
    """
    if seed < EVAL_SEED:
        raise ConfigError(f"held-out seed {seed} is a training world's; use a seed >= {EVAL_SEED}")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    world_dir = Path(workdir) / f"world-{seed}"
    kb = build_world(seed, world_dir)
    return suite_tasks(suite, kb, n, seed), world_tools(world_dir)


__all__ = [
    "EVAL_SEED",
    "SEARCH_HITS",
    "build_world",
    "held_out",
    "suite_tasks",
    "tool_schemas",
    "world_tools",
]
