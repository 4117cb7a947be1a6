"""How much of an agent run's wall time is spent outside the model backend.

Runs :class:`~tepo_agent.agent.TepoAgent` on the default model with a real SQLite store and
times every ``backend.generate`` call. Everything else (prompt rendering and token splicing,
LangGraph, tool execution, trajectory building, the store commit) is overhead.

The agent is offered the tools the bootstrapped default model was trained with (calculator and
search: the prompt it knows) and asked held-out arithmetic questions that need the calculator, so
the calculator really runs; the table counts the calls that returned a result. The synchronous
``run`` and the asynchronous ``arun`` are measured side by side in one process, alternating
rounds, and the median round is reported. Takes about a minute on 2 CPU cores::

    python benchmarks/bench_agent_overhead.py [--runs 12] [--rounds 3] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the benchmarks package lives at the root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._timed import TimedBackend
from tepo_agent.agent import AgentConfig, AgentResult, TepoAgent
from tepo_agent.agent.chat_model import TepoChatModel
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.paths import resolve_model_dir
from tepo_agent.store import TrajectoryStore
from tepo_agent.tasks.math_tasks import math_suite
from tepo_agent.tasks.world import EVAL_SEED, world_tools
from tepo_agent.tools import make_calculator_tool


class ChatFormatTimer:
    """Adds up the time TepoChatModel spends turning conversations into prompt ids and sampled
    ids back into messages (chat template, tokenizer, tool-call parsing): model I/O, which the
    strict figure counts as outside the backend and the "graph + tools + store" figure does not.
    """

    seconds = 0.0

    @classmethod
    def install(cls) -> None:
        for name in ("render_prompt", "_message"):
            original = getattr(TepoChatModel, name)

            def timed(*args, __original=original, **kwargs):  # type: ignore[no-untyped-def]
                start = time.perf_counter()
                try:
                    return __original(*args, **kwargs)
                finally:
                    cls.seconds += time.perf_counter() - start

            setattr(TepoChatModel, name, timed)


class TimedStore(TrajectoryStore):
    """A real store that adds up the wall time of its commits."""

    seconds = 0.0

    def add(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        try:
            return super().add(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


@dataclass
class Round:
    api: str
    runs: int
    turns: int
    calculator_calls: int
    tokens: int
    wall_s: float
    backend_s: float
    tools_s: float
    store_s: float
    chat_format_s: float

    @property
    def outside_s(self) -> float:
        return self.wall_s - self.backend_s

    @property
    def share(self) -> float:
        return self.outside_s / self.wall_s

    @property
    def graph_tools_store_share(self) -> float:
        return (self.outside_s - self.chat_format_s) / self.wall_s


def _round(
    api: str,
    agent: TepoAgent,
    backend: TimedBackend,
    store: TimedStore,
    questions: list[str],
) -> Round:
    backend.reset()
    store.seconds = 0.0
    ChatFormatTimer.seconds = 0.0
    if api == "run":
        start = time.perf_counter()
        results = [agent.run(q) for q in questions]
        wall = time.perf_counter() - start
    else:
        # timed inside the one event loop an async application already runs

        async def all_runs() -> tuple[list[AgentResult], float]:
            start = time.perf_counter()
            done = [await agent.arun(q) for q in questions]
            return done, time.perf_counter() - start

        results, wall = asyncio.run(all_runs())
    calls = [c for r in results for c in r.tool_calls]
    return Round(
        api=api,
        runs=len(questions),
        turns=backend.calls,
        calculator_calls=sum(c["name"] == "calculator" and c["error"] is None for c in calls),
        tokens=backend.tokens,
        wall_s=wall,
        backend_s=backend.seconds,
        tools_s=sum(c["latency_s"] for c in calls),
        store_s=store.seconds,
        chat_format_s=ChatFormatTimer.seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="runs per round and API")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--model", type=Path, default=None, help="default: the bootstrapped default model if built"
    )
    args = parser.parse_args()

    model_dir = resolve_model_dir(str(args.model) if args.model else None)
    tools = [make_calculator_tool()]
    if (model_dir / "world").is_dir():  # a bootstrapped model knows its world's compact schemas
        tools = world_tools(model_dir / "world")
    tasks = [t for t in math_suite(4 * args.runs, seed=EVAL_SEED) if t.needs_tool]
    questions = [t.question for t in tasks[: args.runs]]
    chat_format = ChatFormat.from_pretrained(model_dir)
    inner = TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=1)
    backend = TimedBackend(inner)
    config = AgentConfig(max_new_tokens=args.max_new_tokens, max_tool_calls=2, seed=0)
    ChatFormatTimer.install()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory() as tmp, TimedStore(Path(tmp) / "b.db") as store:
        agent = TepoAgent(backend, chat_format, tools, config, store=store)
        agent.run(questions[0])  # the first call pays for lazy initialisation
        for _ in range(args.rounds):
            for api in ("run", "arun"):
                rounds.append(_round(api, agent, backend, store, questions))
    inner.close()

    print(
        f"Agent overhead: default model ({model_dir.name}), tools "
        f"{', '.join(t.name for t in tools)}, SQLite store, CPU; {args.rounds} rounds of "
        f"{args.runs} held-out arithmetic questions per API, median round by share\n"
    )
    print(
        "| API | runs | turns | calculator calls | tokens | wall s | backend s | outside s |"
        " **outside share** | outside ms/run | of which chat format ms/run | tools ms/run |"
        " store ms/run | graph + tools + store share |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for api in ("run", "arun"):
        mine = sorted((r for r in rounds if r.api == api), key=lambda r: r.share)
        r = mine[len(mine) // 2]
        print(
            f"| `{api}` | {r.runs} | {r.turns} | {r.calculator_calls} | {r.tokens} | "
            f"{r.wall_s:.2f} | {r.backend_s:.2f} | {r.outside_s:.3f} | **{r.share:.1%}** | "
            f"{1000 * r.outside_s / r.runs:.1f} | {1000 * r.chat_format_s / r.runs:.2f} | "
            f"{1000 * r.tools_s / r.runs:.2f} | {1000 * r.store_s / r.runs:.2f} | "
            f"{r.graph_tools_store_share:.1%} |"
        )
    print()
    for api in ("run", "arun"):
        shares = [x.share for x in rounds if x.api == api]
        listed = ", ".join(f"{x:.1%}" for x in shares)
        print(f"- `{api}` outside share per round: {listed} (sd {statistics.pstdev(shares):.2%})")


if __name__ == "__main__":
    main()
