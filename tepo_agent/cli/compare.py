"""``tepo-agent compare``: the TEPO paper's reward comparison, reproduced over seeds.

    tepo-agent compare --rewards outcome,sparse,dense --seeds 3 --budget rounds=3,tasks=16

Every arm starts from the same default model with the same collection and training budget
(``--budget``: rounds, tasks per round, group size, steps per round, lr), once per seed, each in
its own directory under ``--out``; every final policy is evaluated on the same held-out items
(``--eval-n`` per suite, a world training never saw). The table gives, per arm, mean ± sd over
seeds of accuracy, tool calls per item, calls on items that need no tool, the share of
entropy-reducing calls and wall time; each arm relative to the first (``outcome``); and the
paired 95% interval against it over the same items pooled over seeds. Written to
``OUT/compare.md`` and ``OUT/compare.json`` after every finished arm.

Resumable: rerun the same command after an interruption and finished arms are not redone.
"""

from __future__ import annotations

import argparse

from tepo_agent.errors import ConfigError

_KINDS = ("outcome", "sparse", "dense")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare",
        help="compare rewards (outcome, sparse, dense) over seeds on held-out items; resumable",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rewards", default="outcome,sparse,dense", help="comma list of arms")
    p.add_argument("--seeds", type=int, default=3, help="seeds per arm (default 3)")
    p.add_argument(
        "--budget", default="",
        help="KEY=VALUE,... over rounds=3,tasks=16,group=8,steps=2,lr=3e-4,temperature=1",
    )  # fmt: skip
    p.add_argument("--eval-n", type=int, default=32, help="held-out items per suite (32)")
    p.add_argument("--eval-seed", type=int, default=None, help="held-out seed (default 1000)")
    p.add_argument(
        "--eval-samples", type=int, default=1, help="runs per held-out item; > 1 samples at T=1"
    )
    p.add_argument("--model", metavar="DIR", help="starting model (default: the default model)")
    p.add_argument("--out", default="tepo-compare", help="working directory (./tepo-compare)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.paths import resolve_model_dir
    from tepo_agent.tasks.world import EVAL_SEED
    from tepo_agent.trainer.arm import Budget
    from tepo_agent.trainer.compare import CompareConfig, run_compare

    rewards = tuple(r.strip() for r in args.rewards.split(",") if r.strip())
    unknown = [r for r in rewards if r not in _KINDS]
    if unknown:
        raise ConfigError(f"--rewards: unknown arms {unknown}; choose from {list(_KINDS)}")
    cfg = CompareConfig(
        rewards=rewards,  # type: ignore[arg-type]
        seeds=args.seeds,
        budget=Budget.parse(args.budget),
        eval_n=args.eval_n,
        eval_seed=EVAL_SEED if args.eval_seed is None else args.eval_seed,
        eval_samples=args.eval_samples,
    )
    report = run_compare(
        resolve_model_dir(args.model), args.out, cfg, progress=not args.no_progress
    )
    print()
    print(report.markdown)
    print(f"written: {args.out}/compare.md and {args.out}/compare.json")
    return 0
