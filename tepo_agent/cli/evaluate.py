"""``tepo-agent eval``: measure a policy on held-out items.

    tepo-agent eval --suite all --n 50 --model DIR
    tepo-agent eval --suite math --db tepo-agent.db --policy 3 --json
    tepo-agent eval --suite knowledge --base-url http://127.0.0.1:8000 --served-model m --model DIR

Items come from a world generated from ``--seed`` (default 1000 and up: seeds no training run
uses), built and indexed once under ``--workdir``. Prints, per suite and over all: accuracy with
its 95% interval, tool calls per run split by items that need a tool and items that do not,
format errors, the share of entropy-reducing calls (ΔH < 0), mean ΔH, and the paper's pilot
statistic: P(good call | ΔH < 0) beside P(good call | ΔH ≥ 0) with their counts (a good call:
the run is correct and the call's result is used later). In process the entropies are exact;
over HTTP the table says which estimator they come from.

With ``--db`` (or ``--store DB``) the evaluation and every item result are stored in the
database's ``evaluations`` tables, so later reports can show them per policy version. Held-out
runs are never stored as trajectories: the trainer never sees them.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

from tepo_agent.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="measure a policy on held-out items: accuracy with its interval, calls, ΔH, pilot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--suite", choices=("math", "knowledge", "deep_search", "all"), default="all")
    p.add_argument("--n", type=int, default=50, help="held-out items per suite (default 50)")
    p.add_argument("--seed", type=int, default=None, help="held-out seed (default: 1000)")
    p.add_argument("--model", metavar="DIR", help="model directory (default: the default model)")
    p.add_argument(
        "--db",
        metavar="PATH|URL",
        help="evaluate a policy of this registry (a SQLite file or a postgresql:// URL)",
    )
    p.add_argument("--policy", type=int, metavar="V", help="with --db: version (default: live)")
    p.add_argument(
        "--base-url", metavar="URL", action="append",
        help="evaluate a server (vLLM, tepo-agent serve); repeat or comma-separate for replicas",
    )  # fmt: skip
    p.add_argument("--served-model", metavar="NAME", help="with --base-url: the served model")
    p.add_argument(
        "--entropy", choices=("server", "topk", "surprisal"), default="server",
        help="with --base-url: exact entropies from the server (default) or an estimate",
    )  # fmt: skip
    p.add_argument("--samples", type=int, default=1, metavar="G", help="runs per item (1)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--max-tool-calls", type=int, default=6, help="per run (default 6)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="per turn (default 64)")
    p.add_argument("--sampling-seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--workdir", metavar="DIR", help="held-out worlds (default ~/.cache/...)")
    p.add_argument("--store", metavar="PATH|URL", help="store the results here (default: --db)")
    p.add_argument("--label", default="eval", help="label of the stored evaluation")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    p.add_argument("--json", action="store_true", help="print one JSON object, no table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.evaluation import (
        EvalConfig,
        EvalMeta,
        evaluate_items,
        save_evaluation,
        summarize_by_suite,
    )
    from tepo_agent.evaluation.heldout import EVAL_SEED, held_out_items
    from tepo_agent.evaluation.policy import open_policy
    from tepo_agent.evaluation.table import summary_table
    from tepo_agent.paths import resolve_model_dir
    from tepo_agent.store import open_store

    if args.n < 1 or args.samples < 1:
        raise ConfigError("--n and --samples must be >= 1")
    if args.policy is not None and args.db is None:
        raise ConfigError("--policy V needs --db DB (the registry it belongs to)")
    seed = EVAL_SEED if args.seed is None else args.seed
    cfg = EvalConfig(
        samples=args.samples,
        temperature=args.temperature,
        seed=args.sampling_seed,
        max_tool_calls=args.max_tool_calls,
        max_new_tokens=args.max_new_tokens,
    )
    tasks, tools = held_out_items(args.suite, args.n, seed, workdir=args.workdir)
    policy = open_policy(
        model_dir=None if args.db else resolve_model_dir(args.model),
        db=args.db,
        version=args.policy,
        base_url=",".join(args.base_url) if args.base_url else None,
        served_model=args.served_model,
        entropy=args.entropy,
        device=args.device,
    )
    try:
        items = evaluate_items(
            policy.backend, policy.chat_format, tasks, tools, cfg, progress=not args.no_progress
        )
    finally:
        policy.close()
    by_suite = summarize_by_suite(items)
    eval_id = None
    target = args.store or args.db
    if target is not None:
        meta = EvalMeta(
            suite=args.suite, seed=seed, n=args.n, samples=cfg.samples,
            temperature=cfg.temperature, policy_version=policy.policy_version, label=args.label,
            config={"policy": policy.describe, "entropy": policy.entropy, "agent": asdict(cfg)},
        )  # fmt: skip
        with open_store(target) as store:
            eval_id = save_evaluation(store, items, meta)
    if args.json:
        payload = {
            "policy": policy.describe, "policy_version": policy.policy_version,
            "suite": args.suite, "seed": seed, "n": args.n, "samples": cfg.samples,
            "temperature": cfg.temperature, "entropy": policy.entropy, "evaluation_id": eval_id,
            "summary": {name: s.to_json() for name, s in by_suite.items()},
        }  # fmt: skip
        json.dump(payload, sys.stdout, indent=2)
        print()
        return 0
    mode = "greedy" if cfg.temperature == 0 else f"T={cfg.temperature:g}, {cfg.samples} samples"
    print(f"{policy.describe}: {len(tasks)} held-out items (seed {seed}), {mode}")
    print(summary_table(by_suite))
    print(
        f"entropies: {policy.entropy}. good = the run is correct and the call's result is used "
        "later; ΔH<0 = the call lowered the next turn's mean token entropy"
    )
    if eval_id is not None:
        print(f"stored as evaluation {eval_id} in {target}")
    return 0
