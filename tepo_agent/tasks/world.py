"""The task world of the default model: a seeded knowledge base, its search index, and the tools.

The bootstrap fine-tunes the default model in this world, the evaluation gate scores candidate
policies in it, and the demo and the benchmarks run the agent in it, so it belongs to none of
them. A bootstrapped model directory carries its world beside the weights::

    MODEL/world/corpus.jsonl  the knowledge base as documents
    MODEL/world/search.db     its FTS5 index (what the agent's search tool reads)

Held-out evaluation tasks use other seeds than the bootstrap's demonstrations (``EVAL_SEED``).
"""

from __future__ import annotations

import os
from pathlib import Path

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from tepo_agent.errors import ConfigError
from tepo_agent.tasks.base import SuiteName, Task
from tepo_agent.tasks.knowledge import KnowledgeBase, deep_search_suite, knowledge_suite
from tepo_agent.tasks.math_tasks import math_suite
from tepo_agent.tools.calculator import evaluate, format_number
from tepo_agent.tools.search import build_index, make_search_tool

EVAL_SEED = 1000
"""Seed of the held-out task sets (demonstrations use seeds below it)."""


class _CalculatorArgs(BaseModel):
    expression: str


class _SearchArgs(BaseModel):
    query: str


SEARCH_HITS = 3
"""Hits the default world's search tool returns (few: the default model's context is short)."""


def world_tools(world_dir: Path) -> list[BaseTool]:
    """The tools the default agent uses in a bootstrapped world: calculator and search.

    They are the real tools with one-line descriptions and minimal argument schemas: the tool
    schemas are part of every prompt, and a 3 M-parameter model reads them on every turn.
    """
    search = make_search_tool(world_dir / "search.db")

    def calculate(expression: str) -> str:
        return format_number(evaluate(expression))

    async def acalculate(expression: str) -> str:  # inline: cheaper than an executor thread
        return calculate(expression)

    def search_kb(query: str) -> str:
        return str(search.invoke({"query": query, "k": SEARCH_HITS}))

    return [
        StructuredTool.from_function(
            func=calculate,
            coroutine=acalculate,
            name="calculator",
            description="Evaluate arithmetic.",
            args_schema=_CalculatorArgs,
            handle_tool_error=True,  # ToolError reaches the model as an error ToolMessage
        ),
        StructuredTool.from_function(
            func=search_kb,
            name="search",
            description="Search the knowledge base.",
            args_schema=_SearchArgs,
            handle_tool_error=True,  # ToolError reaches the model as an error ToolMessage
        ),
    ]


def build_world(kb_seed: int, world_dir: Path) -> KnowledgeBase:
    """Write the knowledge base's corpus and search index into ``world_dir``."""
    kb = KnowledgeBase(seed=kb_seed)
    world_dir.mkdir(parents=True, exist_ok=True)
    corpus = kb.write_corpus(world_dir / "corpus.jsonl")
    build_index(corpus, world_dir / "search.db")
    return kb


def held_out(
    suite: SuiteName, n: int, seed: int = EVAL_SEED, *, workdir: str | os.PathLike[str]
) -> tuple[list[Task], list[BaseTool]]:
    """Held-out items of ``suite`` in the world of ``seed`` and the tools to solve them.

    The world is built and indexed under ``workdir/world-SEED`` (reused when already there).
    ``seed`` must be at least ``EVAL_SEED``: smaller seeds are training worlds.
    """
    if seed < EVAL_SEED:
        raise ConfigError(f"held-out seed {seed} is a training world's; use a seed >= {EVAL_SEED}")
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    world_dir = Path(workdir) / f"world-{seed}"
    if (world_dir / "search.db").is_file():
        kb = KnowledgeBase(seed=seed)
    else:
        kb = build_world(seed, world_dir)
    if suite == "math":
        tasks = math_suite(n, seed=seed)
    elif suite == "knowledge":
        tasks = knowledge_suite(kb, n, seed=seed)
    elif suite == "deep_search":
        tasks = deep_search_suite(kb, n, seed=seed)
    else:
        raise ConfigError(f"unknown suite {suite!r}: choose math, knowledge or deep_search")
    return tasks, world_tools(world_dir)
