"""``tepo-agent run QUESTION``: answer a question with the tool-using agent and store the run.

Prints the answer, every tool call with its arguments, result (or error) and ΔH (the change in
turn entropy the call caused; negative = the call reduced uncertainty), and the id of the stored
trajectory. With ``--samples G`` it runs G samples concurrently under one group id (a GRPO group).

The model is the in-process ``--model DIR`` (default: the bootstrapped default model if built,
else the random-weight one), or a server (``--base-url URL --served-model NAME``: vLLM or
``tepo-agent serve``), in which case ``--model`` only supplies the tokenizer and chat template.
Tools: calculator and python, plus search with ``--search-db``. On a terminal the model's tokens
are coloured by their entropy (white: sure, to red: unsure); ``--no-color`` or a pipe: plain text.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the handler imports the library: building the parser stays light
    from tepo_agent.agent.graph import AgentResult, TepoAgent
    from tepo_agent.backends.base import Backend


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer a question with tools; print tool calls with ΔH and the trajectory id",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("question", help="the user's question")
    parser.add_argument("--model", metavar="DIR", help="model directory (default: see above)")
    parser.add_argument("--base-url", metavar="URL", help="OpenAI/vLLM server root")
    parser.add_argument("--served-model", metavar="NAME", help="model name on that server")
    parser.add_argument(
        "--entropy",
        choices=("topk", "surprisal", "server"),
        default="topk",
        help="with --base-url: live entropy from top-20 logprobs with bounds (default), the "
        "sampled token's surprisal (cheapest), or the server's exact values (tepo-agent serve)",
    )
    parser.add_argument("--db", metavar="PATH", help="trajectory store (default: $TEPO_AGENT_DB "
                        "or ./tepo-agent.db)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=1, metavar="G", help="group size (1)")
    parser.add_argument("--max-tool-calls", type=int, default=8, metavar="N", help="default: 8")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="per turn (256)")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1)")
    parser.add_argument("--search-db", metavar="PATH", help="FTS5 index for the search tool")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-color", action="store_true", help="never colour tokens by entropy")
    parser.set_defaults(func=run)


def _backend(args: argparse.Namespace, model_dir: Path) -> Backend:
    from tepo_agent.errors import ConfigError

    if args.base_url:
        from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig

        if not args.served_model:
            raise ConfigError("--base-url needs --served-model NAME (the model the server serves)")
        config = json.loads((model_dir / "config.json").read_text())
        return HttpBackend(
            HttpBackendConfig(
                base_url=args.base_url, model=args.served_model, entropy_estimator=args.entropy
            ),
            vocab_size=int(config["vocab_size"]),
        )
    from tepo_agent.backends.transformers_backend import TransformersBackend

    return TransformersBackend.from_pretrained(
        model_dir, device=args.device, max_batch_size=max(1, args.samples)
    )


def _describe(result: AgentResult) -> dict[str, Any]:
    return {
        "trajectory_id": result.trajectory_id,
        "group_id": result.trajectory.group_id,
        "status": result.status,
        "answer": result.answer,
        "turn_entropies": result.turn_entropies,
        "tool_calls": [
            {
                "name": call["name"],
                "args": call["args"],
                "result": call["result"],
                "error": call["error"],
                "delta_entropy": call["delta_entropy"],
                "latency_s": call["latency_s"],
            }
            for call in result.tool_calls
        ],
    }


def _print(result: AgentResult, index: int | None) -> None:
    head = f"[sample {index}] " if index is not None else ""
    for call in result.tool_calls:
        dh = call["delta_entropy"]
        shown = "n/a" if dh is None or math.isnan(dh) else f"{dh:+.3f}"
        outcome = f"error: {call['error']}" if call["error"] else call["result"]
        print(f"{head}tool {call['name']}({json.dumps(call['args'])}) -> {outcome}  ΔH={shown}")
    print(f"{head}answer: {result.answer if result.answer is not None else '(none)'}")
    print(f"{head}status: {result.status}  trajectory: {result.trajectory_id}")


def run(args: argparse.Namespace) -> int:
    from tepo_agent.agent.graph import AgentConfig, TepoAgent
    from tepo_agent.agent.sync import run_sync
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.cli._models import resolve_model_dir
    from tepo_agent.errors import ConfigError
    from tepo_agent.report.terminal import TokenDecoder, colour_wanted, print_coloured_turns
    from tepo_agent.store import TrajectoryStore, default_db_path
    from tepo_agent.tools import default_tools

    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    model_dir = resolve_model_dir(args.model)
    chat_format = ChatFormat.from_pretrained(model_dir)
    config = AgentConfig(
        max_tool_calls=args.max_tool_calls,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    backend = _backend(args, model_dir)

    async def answer(agent: TepoAgent) -> list[AgentResult]:
        # One event loop for the runs and the close: an HTTP client's pooled connections belong
        # to the loop that opened them, and closing them from another loop fails.
        try:
            if args.samples == 1:
                return [await agent.arun(args.question, app_tag="cli")]
            return await agent.arun_group(args.question, args.samples, app_tag="cli")
        finally:
            await backend.aclose()

    try:
        store = TrajectoryStore(args.db or default_db_path())
    except BaseException:
        run_sync(backend.aclose())
        raise
    with store:
        agent = TepoAgent(backend, chat_format, default_tools(args.search_db), config, store=store)
        results: list[AgentResult] = run_sync(answer(agent))
    if args.json:
        payload = [_describe(r) for r in results]
        print(json.dumps(payload[0] if args.samples == 1 else payload, indent=2))
    else:
        colour = colour_wanted(args.no_color, sys.stdout)
        for i, result in enumerate(results):
            if colour:  # the model's tokens, each on the colour of its entropy
                print_coloured_turns(result.trajectory, TokenDecoder(chat_format.tokenizer))
            _print(result, i if args.samples > 1 else None)
        if args.samples > 1:
            print(f"group: {results[0].trajectory.group_id}")
    return 0
