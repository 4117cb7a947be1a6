"""``tepo-agent check-logprobs [--db PATH] [--policy V] [--model DIR] [--limit N]``.

For the most recent trajectories sampled by policy version V (default: the latest version that
has trajectories, i.e. the one the last run sampled with), recompute every sampled token's
logprob in one batched forward pass with that version's weights (or ``--model DIR``) and compare
it with the logged sampling logprob: mean and max absolute difference, and the spread of the
importance ratio. On CPU float32 with the same weights the mean difference is far below 1e-3; a
large one means the runtime's token ids are not what the model saw.
"""

from __future__ import annotations

import argparse
from typing import Any

from tepo_agent.cli._db import DB_HELP, existing_db


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check-logprobs",
        help="compare recomputed with logged logprobs of one policy version's trajectories",
        description=__doc__,
    )
    p.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
    p.add_argument(
        "--policy",
        type=int,
        metavar="V",
        help="the version whose trajectories to check (default: the latest that has some)",
    )
    p.add_argument(
        "--model", metavar="DIR", help="weights to recompute with (default: version V's)"
    )
    p.add_argument("--limit", type=int, default=32, help="most recent trajectories to check")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.trainer.logprob_check import check_logprobs

    report = check_logprobs(
        existing_db(args.db),
        model_dir=args.model,
        version=args.policy,
        limit=args.limit,
        device=args.device,
    )
    for line in report.lines():
        print(line)
    return 0
