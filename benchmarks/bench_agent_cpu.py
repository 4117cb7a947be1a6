"""CPU time of everything an agent run does besides sampling, with an instant backend.

``bench_agent_overhead.py`` measures the share of a run's wall time spent outside a real
backend; on a loaded machine that share moves by a point between invocations. This script takes
the backend out: a scripted backend answers instantly (a calculator call, then the answer, with
made-up logprobs and entropies), so a run's process time (``time.process_time``) is the agent's
own work: prompt rendering and tokenizing, LangGraph, parsing, the calculator, building the
trajectory, the SQLite commit. The agent gets the default model's chat format and task-world
tools (its real prompt). Use it to compare two versions of the code, alternating processes::

    python benchmarks/bench_agent_cpu.py [--runs 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tepo_agent.agent import AgentConfig, TepoAgent
from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.chat.format import ChatFormat
from tepo_agent.paths import resolve_model_dir
from tepo_agent.store import TrajectoryStore
from tepo_agent.tasks.world import world_tools

_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "17 * 23"}}\n</tool_call>'
_ANSWER = "The answer is 391."


class InstantBackend:
    """Answers each run with a calculator call, then the answer, at once."""

    policy_version = 0

    def __init__(self, fmt: ChatFormat) -> None:
        self.vocab_size = len(fmt.tokenizer)
        self._turns = [[*fmt.encode(text), fmt.end_of_turn_id] for text in (_CALL, _ANSWER)]
        self._next = 0

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        ids = tuple(self._turns[self._next % 2])
        entropy = 1.0 if self._next % 2 == 0 else 0.8
        self._next += 1
        n = len(ids)
        return Generation(
            tuple(prompt_token_ids), ids, (-0.5,) * n, (entropy,) * n, "exact", "stop", 0
        )

    async def aclose(self) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs per repetition")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions")
    parser.add_argument("--model", type=Path, default=None, help="default: the default model")
    args = parser.parse_args()

    model_dir = resolve_model_dir(str(args.model) if args.model else None)
    fmt = ChatFormat.from_pretrained(model_dir)
    tools = world_tools(model_dir / "world")
    config = AgentConfig(max_tool_calls=2)
    per_run: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, TrajectoryStore(Path(tmp) / "b.db") as store:
        agent = TepoAgent(InstantBackend(fmt), fmt, tools, config, store=store)
        agent.run("What is 17 * 23?")  # the first run pays for lazy initialisation
        for _ in range(args.repeats):
            start = time.process_time()
            for _ in range(args.runs):
                result = agent.run("What is 17 * 23?")
            per_run.append((time.process_time() - start) / args.runs * 1e3)
    if result.answer != _ANSWER or len(result.tool_calls) != 1 or result.tool_calls[0]["error"]:
        raise SystemExit(f"the scripted run went wrong: {result.answer!r}, {result.tool_calls}")
    shown = ", ".join(f"{ms:.2f}" for ms in per_run)
    print(f"agent CPU ms per run, {args.runs} runs a repetition: {shown}; best {min(per_run):.2f}")


if __name__ == "__main__":
    main()
