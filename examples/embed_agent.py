"""Embed ``TepoAgent`` in an application: live turn entropy, live ΔH per tool call, SQLite log.

What it shows:

- an in-process :class:`~tepo_agent.TransformersBackend` on the default model
  (``tepo_agent.paths.resolve_model_dir``; ``--model DIR`` takes any local Hugging Face causal-LM
  directory, ``--model random`` the random-weight model);
- the calculator tool and the search tool over a small corpus this program indexes (SQLite FTS5);
- ``TepoAgent.astream``: the graph's updates as they happen, so the app prints each assistant
  turn's entropy H(t_k) the moment it is sampled and each tool call's ΔH_k as soon as the turn
  after it exists (ΔH < 0: the call reduced the model's uncertainty);
- the run stored token-exact in ``./tepo-agent.db`` (``--db``), read back from the store.

Run it::

    python examples/embed_agent.py "What is 17 * 23?"
    tepo-agent trajectories list --db tepo-agent.db

A random-weight model rarely writes the tool-call markup; build the bootstrapped default model
once (``tepo-agent bootstrap``, 1,883 s on 2 CPU cores, benchmarks/RESULTS.md) to see it call
tools.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from tepo_agent import (
    AgentConfig,
    ChatFormat,
    TepoAgent,
    TrajectoryStore,
    TransformersBackend,
)
from tepo_agent.paths import resolve_model_dir
from tepo_agent.tools import build_index, make_calculator_tool, make_search_tool

CORPUS = [
    {"id": "paris", "title": "Paris", "text": "Paris is the capital of France, on the Seine."},
    {"id": "rome", "title": "Rome", "text": "Rome is the capital of Italy, on the Tiber."},
    {"id": "seine", "title": "Seine", "text": "The Seine is 777 km long and flows into the sea."},
    {"id": "tiber", "title": "Tiber", "text": "The Tiber is 406 km long and flows through Rome."},
]


def index_corpus(workdir: Path) -> Path:
    """Write the corpus as JSON lines and index it for the search tool."""
    corpus = workdir / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(doc) + "\n" for doc in CORPUS))
    index = workdir / "search.db"
    build_index(corpus, index)
    return index


async def answer(agent: TepoAgent, question: str) -> str | None:
    """Stream one run, printing entropies and ΔH live; return the stored trajectory id."""
    turn = 0
    async for update in agent.astream(question, app_tag="embed-example"):
        if "model" in update:
            for call in update["model"].get("tool_calls", []):
                dh = call["delta_entropy"]
                shown = "—" if dh is None else f"{dh:+.3f} ({'reduced' if dh < 0 else 'raised'})"
                print(f"    ΔH of {call['name']}({call['args']}) = {shown}")
            for h in update["model"].get("turn_entropies", []):
                print(f"  turn {turn}: H = {h:.3f} nats/token")
                turn += 1
        elif "tools" in update:
            for call in update["tools"].get("pending_calls", []):
                outcome = call["error"] or call["result"] or ""
                print(f"  tool {call['name']}({call['args']}) → {outcome[:60]!r}")
        elif "result" in update:
            result = update["result"]
            print(f"answer: {result.answer!r} (status {result.status})")
            return result.trajectory_id
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("question", nargs="?", default="What is 17 * 23?")
    parser.add_argument("--model", type=Path, help="model directory (default: the default model)")
    parser.add_argument("--db", type=Path, default=Path("tepo-agent.db"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model_dir = resolve_model_dir(args.model)
    tools = [make_calculator_tool(), make_search_tool(index_corpus(args.db.resolve().parent))]
    config = AgentConfig(max_tool_calls=3, max_new_tokens=64, seed=args.seed)
    print(f"model: {model_dir}")
    with (
        TransformersBackend.from_pretrained(model_dir) as backend,
        TrajectoryStore(args.db) as store,
    ):
        agent = TepoAgent(backend, ChatFormat.from_pretrained(model_dir), tools, config, store)
        trajectory_id = asyncio.run(answer(agent, args.question))
        assert trajectory_id is not None
        stored = store.get(trajectory_id)
        calls = stored.tool_turns()
        print(
            f"stored trajectory {trajectory_id} in {args.db}: policy v{stored.policy_version}, "
            f"{len(stored.assistant_turns())} assistant turns, {len(calls)} tool calls, "
            f"{len(stored.full_token_ids())} tokens"
        )


if __name__ == "__main__":
    main()
