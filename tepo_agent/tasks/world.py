"""The task world of the default model: a seeded knowledge base, its search index, and the tools.

The bootstrap fine-tunes the default model in this world, the evaluation gate scores candidate
policies in it, and the demo and the benchmarks run the agent in it, so it belongs to none of
them. A bootstrapped model directory carries its world beside the weights::

    MODEL/world/corpus.jsonl  the knowledge base as documents
    MODEL/world/search.db     its FTS5 index (what the agent's search tool reads)

Held-out evaluation tasks use other seeds than the bootstrap's demonstrations (``EVAL_SEED``).
"""

from __future__ import annotations

from pathlib import Path

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel

from tepo_agent.tasks.knowledge import KnowledgeBase
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
