"""``tepo-agent run QUESTION``: answer a question with the tool-using agent and store the run.

Prints every tool call with its arguments, result (or error) and ΔH (the change in turn entropy
the call caused; negative = the call reduced uncertainty), the answer, the run's status and the
id of the stored trajectory with the policy version that sampled it. With ``--samples G`` it runs
G samples concurrently under one group id (a GRPO group), stored together.

Which weights: the database's live policy version (after ``tepo-agent train``, the newly
published one; after ``tepo-agent rollback``, the one rolled back to). A new database is created
and registers the default model (or ``--model DIR``) as version 0. ``--model DIR`` on a database
that has versions samples with DIR: as its version if DIR is one, else as a model outside the
registry (its trajectories then name no policy version). ``--model random`` is the random-weight
model (machinery tests only).

A server instead (``--base-url URL``, with or without ``/v1``: vLLM or ``tepo-agent serve``):
the served model is found with GET /v1/models when the server serves one (else name it with
``--served-model``), and ``--model`` only supplies the tokenizer and chat template. Several
replicas of one model: repeat ``--base-url`` or give a comma-separated list; each request goes
to the replica with the fewest requests in flight, a failed replica is taken out (and probed
with backoff until it answers) and the request retried on another. Each stored turn names the
replica that sampled it (``turns.replica``). docs/deployment.md describes a fleet.

Tools: the default model's own (calculator and search over the world it was trained on) when
the model ships a ``world/search.db``; else calculator and python, plus search with
``--search-db``.

On a terminal the model's tokens are coloured by their entropy (white: sure, to red: unsure);
``--no-color`` or a pipe: plain text.

Randomness: without ``--seed`` a seed is drawn per run and stored with each trajectory
(``metadata.seed``, and ``metadata.sample`` its index in the group), so any run can be replayed
with ``--seed``.

``--json`` prints one JSON object for one sample, a JSON list of them for ``--samples G > 1``;
each object has trajectory_id, group_id, policy_version, seed, status, answer, turn_entropies
and tool_calls (name, args, raw, result, error, delta_entropy, latency_s).
"""

from __future__ import annotations

import argparse
import json
import math
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tepo_agent.cli._db import DB_HELP, creates_store, db_target
from tepo_agent.cli._show import error_text, malformed_texts
from tepo_agent.errors import ConfigError

if TYPE_CHECKING:
    from tepo_agent.agent.graph import AgentResult
    from tepo_agent.backends.base import Backend
    from tepo_agent.cli._policy import RunPolicy
    from tepo_agent.trajectory import Trajectory


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="answer a question with tools; print tool calls with ΔH and the trajectory id",
        description=__doc__,
    )
    parser.add_argument("question", help="the user's question")
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="model directory, or 'random' (default: the database's live version, else the "
        "default model)",
    )
    parser.add_argument(
        "--base-url",
        metavar="URL",
        action="append",
        help="OpenAI/vLLM server (/v1 optional); repeat it, or give a comma-separated list, for "
        "several replicas of one model",
    )
    parser.add_argument(
        "--served-model", metavar="NAME", help="model name on that server (default: its only one)"
    )
    parser.add_argument(
        "--entropy",
        choices=("auto", "plugin", "topk", "surprisal", "server"),
        default="auto",
        help="with --base-url: 'auto' takes the server's exact values when it has them "
        "(`tepo-agent vllm serve` with its plugin, or `tepo-agent serve`) and else estimates "
        "from top-20 logprobs with bounds; or force one: the vLLM plugin's exact values, "
        "top-k, the sampled token's surprisal (cheapest), tepo-agent serve's exact values "
        "(default: auto; each turn stores which one produced its entropies)",
    )
    parser.add_argument(
        "--db",
        metavar="PATH|URL",
        help=DB_HELP + "; a missing SQLite file is created",
    )
    parser.add_argument("--samples", type=int, default=1, metavar="G", help="group size")
    parser.add_argument("--max-tool-calls", type=int, default=8, metavar="N", help="per run")
    parser.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="per turn")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    parser.add_argument("--search-db", metavar="PATH", help="FTS5 index for the search tool")
    parser.add_argument(
        "--seed", type=int, default=None, help="sampling seed (default: a fresh one, stored)"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--json", action="store_true", help="print JSON (see above)")
    parser.add_argument("--no-color", action="store_true", help="never colour tokens by entropy")
    parser.set_defaults(func=run)


def _tools(args: argparse.Namespace, model_dirs: list[Path]) -> list[Any]:
    """The default model's own tools when it ships its world, else the built-in ones."""
    if args.search_db is None:
        for folder in model_dirs:
            if (folder / "world" / "search.db").is_file():
                from tepo_agent.tasks.world import world_tools

                return world_tools(folder / "world")
    from tepo_agent.tools import default_tools

    return default_tools(args.search_db)


def _http_backend(args: argparse.Namespace, model_dir: Path) -> Backend:
    from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig, served_models
    from tepo_agent.backends.http_config import replica_urls

    urls = replica_urls(args.base_url)
    served = args.served_model
    if not served:
        names = _served_names(urls, served_models)
        if len(names) != 1:
            raise ConfigError(
                f"{urls[0]} serves {len(names)} models ({', '.join(names) or 'none'}); "
                "name one with --served-model NAME"
            )
        served = names[0]
    config = json.loads((model_dir / "config.json").read_text())
    return HttpBackend(
        HttpBackendConfig(base_url=urls, model=served, entropy_estimator=args.entropy),
        vocab_size=int(config["vocab_size"]),
    )


def _served_names(urls: tuple[str, ...], served_models: Any) -> list[str]:
    """The model names of the first replica that answers (one down must not stop the run)."""
    from tepo_agent.errors import BackendUnavailableError

    for url in urls[:-1]:
        try:
            return list(served_models(url))
        except BackendUnavailableError:
            continue
    return list(served_models(urls[-1]))  # the last one's error names what to check


def _describe(result: AgentResult) -> dict[str, Any]:
    traj = result.trajectory
    return {
        "trajectory_id": traj.id,
        "group_id": traj.group_id,
        "policy_version": traj.policy_version,
        "seed": traj.metadata.get("seed"),
        "status": result.status,
        "answer": result.answer,
        "turn_entropies": result.turn_entropies,
        "tool_calls": [
            {
                "name": call["name"],
                "args": call["args"],
                "raw": raw,
                "result": call["result"],
                "error": call["error"],
                "delta_entropy": call["delta_entropy"],
                "latency_s": call["latency_s"],
            }
            for call, raw in zip(result.tool_calls, _raw_calls(result), strict=False)
        ],
    }


def _raw_calls(result: AgentResult) -> list[str | None]:
    """What the model wrote for each call that is malformed (None for well-formed calls)."""
    return malformed_texts(result.trajectory, [c["tool_call_id"] for c in result.tool_calls])


def _print(result: AgentResult, index: int | None) -> None:
    head = f"[sample {index}] " if index is not None else ""
    for call, raw in zip(result.tool_calls, _raw_calls(result), strict=False):
        dh = call["delta_entropy"]
        shown = "n/a" if dh is None or math.isnan(dh) else f"{dh:+.3f}"
        what = (
            f"malformed call {raw!r}"
            if call["name"] is None
            else f"{call['name']}({json.dumps(call['args'])})"
        )
        outcome = error_text(call["error"]) if call["error"] else call["result"]
        print(f"{head}tool {what} -> {outcome}  ΔH={shown}")
    traj = result.trajectory
    policy = "none (outside the registry)" if traj.policy_version is None else traj.policy_version
    print(f"{head}answer: {result.answer if result.answer is not None else '(none)'}")
    print(
        f"{head}status: {result.status}  trajectory: {traj.id}  policy: {policy}  "
        f"seed: {traj.metadata.get('seed')}"
    )


def _annotate(results: list[AgentResult], seed: int, policy: RunPolicy | None) -> None:
    """Stamp each trajectory with its seed and, outside the registry, its model (no version)."""
    for sample, result in enumerate(results):
        traj: Trajectory = result.trajectory
        traj.metadata.update(seed=seed, sample=sample)
        if policy is not None and policy.record is None:
            traj.metadata["model"] = str(policy.model_dir)
            for turn in traj.assistant_turns():
                turn.policy_version = None


def run(args: argparse.Namespace) -> int:
    from tepo_agent.agent.graph import AgentConfig, TepoAgent
    from tepo_agent.agent.sync import run_sync
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.cli._policy import choose_policy, load_policy
    from tepo_agent.paths import resolve_model_dir
    from tepo_agent.policy.registry import PolicyRegistry
    from tepo_agent.store import open_store

    if args.samples < 1:
        raise ConfigError(f"--samples must be >= 1, got {args.samples}")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    path = db_target(args.db)
    created = creates_store(path)
    if created:
        resolve_model_dir(args.model)  # a missing default model fails before a file is made
    with open_store(path) as store:
        if created:
            print(f"tepo-agent run: created trajectory database {path}", file=sys.stderr)
        policy: RunPolicy | None = None
        if args.base_url:
            model_dir = resolve_model_dir(args.model)
            tool_dirs = [model_dir]
            backend = _http_backend(args, model_dir)
        else:
            from tepo_agent.backends.transformers_backend import TransformersBackend

            registry = PolicyRegistry(store)
            policy = choose_policy(registry, args.model)
            model_dir = policy.model_dir
            base = [Path(r.path) for r in registry.list() if r.version == 0]
            tool_dirs = [model_dir, *base]
            backend = TransformersBackend.from_pretrained(
                model_dir,
                device=args.device,
                max_batch_size=max(1, args.samples),
                policy_version=policy.version or 0,
            )
            load_policy(backend, policy)
        chat_format = ChatFormat.from_pretrained(model_dir)
        config = AgentConfig(
            max_tool_calls=args.max_tool_calls,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            seed=seed,
        )
        agent = TepoAgent(backend, chat_format, _tools(args, tool_dirs), config)

        async def answer() -> list[AgentResult]:
            # One event loop for the runs and the close: an HTTP client's pooled connections
            # belong to the loop that opened them, and closing them from another loop fails.
            try:
                if args.samples == 1:
                    return [await agent.arun(args.question, app_tag="cli")]
                return await agent.arun_group(args.question, args.samples, app_tag="cli")
            finally:
                await backend.aclose()

        results: list[AgentResult] = run_sync(answer())
        _annotate(results, seed, policy)
        store.add_many([r.trajectory for r in results])  # a group lands in one transaction
    if policy is not None and policy.record is None:
        print(f"tepo-agent run: note: {policy.note}", file=sys.stderr)
    if args.json:
        payload = [_describe(r) for r in results]
        print(json.dumps(payload[0] if args.samples == 1 else payload, indent=2))
        return 0
    from tepo_agent.report.terminal import TokenDecoder, colour_wanted, print_coloured_turns

    colour = colour_wanted(args.no_color, sys.stdout)
    for i, result in enumerate(results):
        if colour:  # the model's tokens, each on the colour of its entropy
            print_coloured_turns(result.trajectory, TokenDecoder(chat_format.tokenizer))
        _print(result, i if args.samples > 1 else None)
    if args.samples > 1:
        print(f"group: {results[0].trajectory.group_id}")
    return 0
