"""``tepo-agent feedback TRAJECTORY_ID VALUE``: score a stored trajectory from outside the app.

The value is a score in [0, 1]; it becomes the trajectory's score (latest feedback wins) and
queues the trajectory for the trainer. Same as ``TrajectoryStore.record_feedback``.
TRAJECTORY_ID may be any unique prefix of the id ``tepo-agent run`` printed.
"""

from __future__ import annotations

import argparse

from tepo_agent.cli._db import DB_HELP, open_store


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "feedback",
        help="record a score in [0, 1] for a stored trajectory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("trajectory_id", metavar="TRAJECTORY_ID", help="an id or unique prefix")
    parser.add_argument("value", metavar="VALUE", type=float, help="score in [0, 1]")
    parser.add_argument("--db", metavar="PATH|URL", help=DB_HELP)
    parser.add_argument("--source", default="cli", help="who gave the feedback (default: cli)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with open_store(args.db) as store:
        trajectory_id = store.resolve_id(args.trajectory_id)
        store.record_feedback(trajectory_id, args.value, source=args.source)
    print(f"{trajectory_id}: score {args.value:g} ({args.source})")
    return 0
