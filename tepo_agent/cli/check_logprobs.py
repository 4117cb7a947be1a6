"""``tepo-agent check-logprobs --db PATH [--model DIR] [--limit N]``.

For the most recent trajectories sampled by the live policy version, recompute every sampled
token's logprob in one batched forward pass and compare it with the logged sampling logprob:
mean and max absolute difference, and the spread of the importance ratio. On CPU float32 with
the same weights the mean difference is far below 1e-3; a large one means the runtime's token
ids are not what the model saw.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "check-logprobs",
        help="compare recomputed with logged logprobs of the live version's trajectories",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", required=True, help="the trajectory database")
    p.add_argument("--model", help="weights to recompute with (default: the live policy's)")
    p.add_argument("--limit", type=int, default=32, help="most recent trajectories to check")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tepo_agent.trainer.logprob_check import check_logprobs

    report = check_logprobs(args.db, model_dir=args.model, limit=args.limit, device=args.device)
    for line in report.lines():
        print(line)
    return 0
