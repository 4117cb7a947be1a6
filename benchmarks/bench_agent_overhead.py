"""How much of an agent run's wall time is spent outside the model backend.

Runs :class:`~tepo_agent.agent.TepoAgent` on the default model with the calculator tool and a
real SQLite store, timing every ``backend.generate`` call. Everything else (prompt rendering and
token splicing, LangGraph, tool execution, trajectory building, the store commit) is overhead.
Prints a markdown table. Takes well under a minute on 2 CPU cores::

    python benchmarks/bench_agent_overhead.py [--runs 6] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tepo_agent.agent import AgentConfig, TepoAgent
from tepo_agent.backends.base import Backend, Generation, SamplingParams
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat_format import ChatFormat
from tepo_agent.cli._models import resolve_model_dir
from tepo_agent.store import TrajectoryStore
from tepo_agent.tools import make_calculator_tool


class TimedBackend:
    """Delegates to a backend and adds up the wall time spent inside ``generate``."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0
        self.tokens = 0

    @property
    def policy_version(self) -> int:
        return self.inner.policy_version

    @property
    def vocab_size(self) -> int:
        return self.inner.vocab_size

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        start = time.perf_counter()
        try:
            generation = await self.inner.generate(prompt_token_ids, params)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
        self.tokens += len(generation.token_ids)
        return generation

    async def aclose(self) -> None:
        await self.inner.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--model", type=Path, default=None, help="default: the bootstrapped default model if built"
    )
    args = parser.parse_args()

    model_dir = resolve_model_dir(str(args.model) if args.model else None)
    tools = [make_calculator_tool()]
    if (model_dir / "world").is_dir():  # a bootstrapped model knows its world's compact schemas
        from tepo_agent.trainer.bootstrap import world_tools

        tools = [t for t in world_tools(model_dir / "world") if t.name == "calculator"]
    chat_format = ChatFormat.from_pretrained(model_dir)
    inner = TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=1)
    backend = TimedBackend(inner)
    config = AgentConfig(max_new_tokens=args.max_new_tokens, max_tool_calls=2, seed=0)
    questions = [f"What is {17 + i} * {23 + i}?" for i in range(args.runs)]
    with tempfile.TemporaryDirectory() as tmp, TrajectoryStore(Path(tmp) / "b.db") as store:
        agent = TepoAgent(backend, chat_format, tools, config, store=store)
        agent.run("warm-up")  # first call pays for lazy initialisation
        backend.seconds, backend.calls, backend.tokens = 0.0, 0, 0
        tool_calls = 0
        start = time.perf_counter()
        for question in questions:
            tool_calls += len(agent.run(question).tool_calls)
        total = time.perf_counter() - start
    inner.close()

    outside = total - backend.seconds
    print(f"Agent overhead: default model ({model_dir.name}), calculator tool, SQLite store, CPU\n")
    print("| runs | turns | tool calls | tokens | wall s | backend s | outside s | outside share |"
          " outside ms/run |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.runs} | {backend.calls} | {tool_calls} | {backend.tokens} | {total:.2f} | "
        f"{backend.seconds:.2f} | {outside:.2f} | {outside / total:.1%} | "
        f"{1000 * outside / args.runs:.1f} |"
    )


if __name__ == "__main__":
    main()
